// Shared by the Rcpp glue: conversions between R matrices and tensors, and
// a guard that turns engine exceptions into plain R errors (no C++ backtrace).
#pragma once
#include <torch/torch.h>
#include <Rcpp.h>

#include <map>
#include <sstream>
#include <string>

#define PF_GUARD_BEGIN try {
#define PF_GUARD_END                                             \
  }                                                              \
  catch (const c10::Error& e) {                                  \
    Rcpp::stop(std::string(e.what_without_backtrace()));         \
  }                                                              \
  catch (const Rcpp::internal::InterruptedException&) {          \
    throw;                                                       \
  }                                                              \
  catch (const std::exception& e) {                              \
    Rcpp::stop(std::string(e.what()));                           \
  }

namespace popflow_r {

// R's column-major cells x features matrix -> [n, d] float32 tensor (a copy).
inline torch::Tensor to_tensor(const Rcpp::NumericMatrix& m) {
  auto view = torch::from_blob(const_cast<double*>(m.begin()), {m.ncol(), m.nrow()}, torch::kDouble);
  return view.t().to(torch::kFloat).contiguous();
}

// [n, d] tensor -> R matrix.
inline Rcpp::NumericMatrix to_matrix(const torch::Tensor& t) {
  auto cm = t.to(torch::kCPU, torch::kDouble).t().contiguous();
  Rcpp::NumericMatrix out(static_cast<int>(t.size(0)), static_cast<int>(t.size(1)));
  std::copy(cm.data_ptr<double>(), cm.data_ptr<double>() + cm.numel(), out.begin());
  return out;
}

}  // namespace popflow_r
