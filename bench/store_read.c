/* Reading a training step's blocks: pread() from a plain binary store against
 * HDF5 hyperslabs of the same cells (Debian's libhdf5), page cache warm. The
 * measurement behind the population store's format (R/store.R, src/core/population_store.h).
 *
 *   gcc -O2 -I/usr/include/hdf5/serial bench/store_read.c \
 *       -L/usr/lib/x86_64-linux-gnu/hdf5/serial -lhdf5 -o /tmp/store_read
 *   /tmp/store_read DIR [cells=1000000] [block=500] [steps=2000]
 *
 * Cells: `cells` rows of 50 float32 in blocks of `block` rows (a population's
 * source or target cells); a step reads 20 random whole blocks (10
 * populations, both sides), as MFM's default 10 populations a step does.
 * Writes DIR/store_read.bin and DIR/store_read.h5 and deletes them. Prints
 * milliseconds per step for each reader (median of 5 runs of `steps` steps).
 */
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DIM 50
#define PER_STEP 20
#define HEADER 4096

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s DIR [cells] [block] [steps]\n", argv[0]);
    return 2;
  }
  const long cells = argc > 2 ? atol(argv[2]) : 1000000, block = argc > 3 ? atol(argv[3]) : 500,
             steps = argc > 4 ? atol(argv[4]) : 2000;
  const long blocks = cells / block;
  char bin[4096], h5[4096];
  snprintf(bin, sizeof bin, "%s/store_read.bin", argv[1]);
  snprintf(h5, sizeof h5, "%s/store_read.h5", argv[1]);
  float* x = malloc(sizeof(float) * cells * DIM);
  srand(1);
  for (long i = 0; i < cells * DIM; ++i) x[i] = (float)rand() / RAND_MAX;
  /* The plain store: a header page, then the rows. */
  int fd = open(bin, O_CREAT | O_TRUNC | O_RDWR, 0644);
  char zero[HEADER] = {0};
  if (pwrite(fd, zero, HEADER, 0) != HEADER || pwrite(fd, x, sizeof(float) * cells * DIM, HEADER) < 0) return 1;
  close(fd);
  /* HDF5: one contiguous [cells, 50] dataset. */
  hsize_t dims[2] = {(hsize_t)cells, DIM};
  hid_t file = H5Fcreate(h5, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t space = H5Screate_simple(2, dims, NULL);
  hid_t ds = H5Dcreate2(file, "cells", H5T_NATIVE_FLOAT, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x);
  H5Dclose(ds);
  H5Sclose(space);
  H5Fclose(file);
  free(x);

  long* order = malloc(sizeof(long) * steps * PER_STEP);
  for (long i = 0; i < steps * PER_STEP; ++i) order[i] = rand() % blocks;
  float* buf = malloc(sizeof(float) * block * DIM * PER_STEP);
  double t_pread[5], t_h5[5];
  fd = open(bin, O_RDONLY);
  file = H5Fopen(h5, H5F_ACC_RDONLY, H5P_DEFAULT);
  ds = H5Dopen2(file, "cells", H5P_DEFAULT);
  space = H5Dget_space(ds);
  hsize_t count[2] = {(hsize_t)block, DIM};
  hid_t mem = H5Screate_simple(2, count, NULL);
  for (int run = 0; run < 5; ++run) {
    double t0 = now();
    for (long s = 0; s < steps; ++s)
      for (int j = 0; j < PER_STEP; ++j) {
        long b = order[s * PER_STEP + j];
        size_t n = sizeof(float) * block * DIM;
        if (pread(fd, buf + j * block * DIM, n, HEADER + (off_t)b * (off_t)n) != (ssize_t)n) return 1;
      }
    t_pread[run] = 1000 * (now() - t0) / steps;
    t0 = now();
    for (long s = 0; s < steps; ++s)
      for (int j = 0; j < PER_STEP; ++j) {
        hsize_t start[2] = {(hsize_t)(order[s * PER_STEP + j] * block), 0};
        H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
        H5Dread(ds, H5T_NATIVE_FLOAT, mem, space, H5P_DEFAULT, buf + j * block * DIM);
      }
    t_h5[run] = 1000 * (now() - t0) / steps;
  }
  qsort(t_pread, 5, sizeof(double), cmp);
  qsort(t_h5, 5, sizeof(double), cmp);
  printf("%ld cells x %d float32, blocks of %ld rows, %d blocks a step (%.2f MB)\n", cells, DIM, block, PER_STEP,
         PER_STEP * block * DIM * 4 / 1e6);
  printf("pread (plain store): %.3f ms per step (runs %.3f-%.3f)\n", t_pread[2], t_pread[0], t_pread[4]);
  printf("HDF5 hyperslab:      %.3f ms per step (runs %.3f-%.3f)\n", t_h5[2], t_h5[0], t_h5[4]);
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(ds);
  H5Fclose(file);
  close(fd);
  unlink(bin);
  unlink(h5);
  return 0;
}
