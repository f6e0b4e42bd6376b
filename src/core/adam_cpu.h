// One Adam step over flat float32 CPU buffers in a single pass, saving the
// state it overwrites on the way. FlatAdam's eager step is otherwise about a
// dozen whole-buffer LibTorch operations (three copies for remember(), the
// moments, the denominator, the update, the average): each a dispatch and a
// pass over memory. The fused pass costs one.
#pragma once
#include <cstdint>

namespace popflow {

struct AdamBuffers {
  float* weights;
  const float* grad;
  float* m;
  float* v;
  float* ema;  // nullptr without a moving average
  // Where the weights, moments and average are saved before the update (remember()).
  float* saved_weights;
  float* saved_m;
  float* saved_v;
  float* saved_ema;  // nullptr without a moving average
  int64_t n;
};

// In float, each computed in double: 1 - beta2 rounded from float's 0.999 would be 1.3e-5 off.
struct AdamCoefficients {
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float eps, weight_decay;
  float ema_decay, one_minus_ema_decay;
  float step_size;   // -lr / (1 - beta1^t)
  float bias2_sqrt;  // sqrt(1 - beta2^t)
};

// Saves, then updates, as FlatAdam::remember() and step() do with LibTorch's
// operations: the same arithmetic (weight decay added to the gradient,
// m and v moved towards g and g^2, weights += step_size * m / (sqrt(v) /
// bias2_sqrt + eps), the average towards the new weights), with fused
// multiply-adds where the CPU has them, so results agree to float rounding.
// The gradient is left as it is. Runs across LibTorch's intra-op threads.
void adam_step_cpu(const AdamBuffers& b, const AdamCoefficients& c);

}  // namespace popflow
