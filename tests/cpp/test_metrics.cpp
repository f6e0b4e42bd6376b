// Distances between cell sets (metrics.h).
#include <torch/torch.h>

#include <cmath>
#include <random>
#include <vector>

#include "check.h"
#include "fixtures.h"
#include "metrics.h"

using namespace popflow;
using namespace fixtures;

namespace {

// Column-major copy of a [rows, cols] tensor, with a MatView on it.
struct ColMajor {
  std::vector<double> data;
  MatView view() const {
    return {data.data(), rows, cols};
  }
  int rows = 0, cols = 0;
};

ColMajor col_major(const torch::Tensor& x) {
  auto t = x.to(torch::kDouble).t().contiguous();  // [cols, rows] row-major = column-major x
  ColMajor out;
  out.rows = static_cast<int>(x.size(0));
  out.cols = static_cast<int>(x.size(1));
  out.data.assign(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
  return out;
}

}  // namespace

TEST_CASE("metrics: zero distance to itself, translation length for W1/W2") {
  torch::manual_seed(17);
  auto x = torch::randn({30, 4}, kD);
  auto v = torch::tensor({0.3, -0.4, 1.2, 0.0}, kD);  // |v| = 1.3
  auto perm = torch::randperm(30);
  auto y = x.index_select(0, perm) + v;
  auto X = col_major(x), Y = col_major(y), Xp = col_major(x.index_select(0, perm));
  PF_CHECK_NEAR(wasserstein(X.view(), X.view(), 1), 0.0, 1e-12);
  PF_CHECK_NEAR(wasserstein(X.view(), Xp.view(), 2), 0.0, 1e-12);
  PF_CHECK_NEAR(wasserstein(X.view(), Y.view(), 2), 1.3, 1e-9);
  PF_CHECK_NEAR(wasserstein(X.view(), Y.view(), 1), 1.3, 1e-9);
  PF_CHECK_THROWS_AS(wasserstein(X.view(), Y.view(), 3), std::invalid_argument);
  auto z = col_major(torch::randn({10, 3}, kD));
  PF_CHECK_THROWS_AS(wasserstein(X.view(), z.view(), 1), std::invalid_argument);
}

TEST_CASE("metrics: W1 matches brute force and W1 <= W2") {
  std::mt19937_64 rng(18);
  torch::manual_seed(18);
  for (int rep = 0; rep < 5; ++rep) {
    auto a = torch::randn({6, 2}, kD), b = torch::randn({6, 2}, kD) * 2;
    auto A = col_major(a), B = col_major(b);
    auto d = (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(2).sqrt().contiguous();
    std::vector<double> c(d.data_ptr<double>(), d.data_ptr<double>() + 36);
    const double w1 = wasserstein(A.view(), B.view(), 1);
    PF_CHECK_NEAR(w1, brute_force_assignment(c, 6), 1e-10);
    PF_CHECK_LE(w1, wasserstein(A.view(), B.view(), 2) + 1e-12);
  }
}

TEST_CASE("metrics: MMD, energy distance, mean R2, correlation r") {
  torch::manual_seed(19);
  auto x = torch::randn({40, 5}, kD);
  x.select(1, 1).add_(x.select(1, 0) * 0.7);  // some correlation structure
  auto X = col_major(x), Xp = col_major(x.flip(0));
  auto Y = col_major(x + 0.5), W = col_major(torch::randn({25, 5}, kD) * 2);
  const auto& g = default_mmd_gammas();
  PF_CHECK(!g.empty());
  PF_CHECK_NEAR(mmd_rbf(X.view(), X.view(), g), 0.0, 1e-12);
  PF_CHECK_NEAR(mmd_rbf(X.view(), Xp.view(), g), 0.0, 1e-12);
  PF_CHECK(mmd_rbf(X.view(), Y.view(), g) > 1e-4);
  PF_CHECK(mmd_rbf(X.view(), W.view(), g) > 1e-4);
  PF_CHECK(mmd_rbf(X.view(), Y.view(), g) < mmd_rbf(X.view(), col_major(x + 2.0).view(), g));
  PF_CHECK_THROWS_AS(mmd_rbf(X.view(), Y.view(), {}), std::invalid_argument);
  PF_CHECK_NEAR(energy_distance(X.view(), X.view()), 0.0, 1e-12);
  PF_CHECK(energy_distance(X.view(), Y.view()) > 1e-4);
  PF_CHECK(energy_distance(X.view(), W.view()) > 1e-4);
  PF_CHECK_NEAR(mean_r2(X.view(), Xp.view()), 1.0, 1e-12);
  PF_CHECK(mean_r2(X.view(), Y.view()) < 0.999);
  PF_CHECK_NEAR(correlation_r(X.view(), X.view()), 1.0, 1e-12);
  PF_CHECK_NEAR(correlation_r(Xp.view(), X.view()), 1.0, 1e-12);
  PF_CHECK_NEAR(correlation_r(Y.view(), X.view()), 1.0, 1e-12);  // shifts keep correlations
  PF_CHECK(correlation_r(W.view(), X.view()) < 0.99);
  auto two = col_major(x.slice(1, 0, 2));
  PF_CHECK(std::isnan(correlation_r(two.view(), two.view())));
}

TEST_CASE("metrics: integer weights equal repeated rows; uniform weights change nothing") {
  torch::manual_seed(31);
  auto xt = torch::randn({6, 2}, kD), yt = torch::randn({5, 2}, kD) + 1;
  auto x = col_major(xt), y = col_major(yt);
  const std::vector<double> w{1, 2, 1, 3, 1, 1};
  std::vector<torch::Tensor> rows;
  for (int i = 0; i < 6; ++i)
    for (int r = 0; r < w[i]; ++r) rows.push_back(xt[i].unsqueeze(0));
  auto rep = col_major(torch::cat(rows));
  for (int p : {1, 2})
    PF_CHECK_NEAR(wasserstein(x.view(), y.view(), p, w), wasserstein(rep.view(), y.view(), p), 1e-9);
  PF_CHECK_NEAR(mmd_rbf(x.view(), y.view(), default_mmd_gammas(), w), mmd_rbf(rep.view(), y.view(), default_mmd_gammas()),
                1e-12);
  PF_CHECK_NEAR(energy_distance(x.view(), y.view(), w), energy_distance(rep.view(), y.view()), 1e-12);
  PF_CHECK_NEAR(wasserstein(x.view(), y.view(), 1, std::vector<double>(6, 0.5)), wasserstein(x.view(), y.view(), 1),
                1e-9);
  PF_CHECK_THROWS_AS(wasserstein(x.view(), y.view(), 1, {1, 2}), std::invalid_argument);
  PF_CHECK_THROWS_AS(wasserstein(x.view(), y.view(), 1, std::vector<double>(6, 0.0)), std::invalid_argument);
}
