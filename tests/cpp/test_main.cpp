// Unit tests of popflow's C++ engine (src/core), one test_<module>.cpp per
// engine module; each registers its cases with TEST_CASE (check.h). Build and
// run with tools/cpp_tests.sh. Usage: popflow_tests [-v] [name-filter]
#include <ATen/Parallel.h>

#include <string>

#include "check.h"

int main(int argc, char** argv) {
  bool verbose = false;
  std::string filter;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-v" || a == "--verbose") verbose = true;
    else filter = a;
  }
  at::set_num_threads(1);
  return check::run_all(filter, verbose);
}
