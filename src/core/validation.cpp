#include "validation.h"

#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>

#include "metrics.h"
#include "trainer.h"
#include "transport.h"

namespace popflow {
namespace {

// metrics.h reads column-major doubles: the transpose of a row-major [n, d] matrix.
torch::Tensor column_major(const torch::Tensor& x) {
  return x.detach().to(torch::kCPU, torch::kDouble).t().contiguous();
}

MatView view_of(const torch::Tensor& columns) {
  return {columns.data_ptr<double>(), static_cast<int>(columns.size(1)), static_cast<int>(columns.size(0))};
}

void check_cells(const torch::Tensor& x, int64_t dim, size_t set, const char* side) {
  if (!x.defined() || x.dim() != 2 || x.size(1) != dim || x.size(0) < 1)
    throw std::invalid_argument("validation set " + std::to_string(set) + ": the " + side +
                                " cells must be a non-empty matrix with " + std::to_string(dim) + " columns");
}

// A per-set row ([k] or [1, k]) of a model part with `width` entries; undefined when width is 0.
torch::Tensor set_row(const torch::Tensor& row, int64_t width, size_t set, const char* what) {
  if (width == 0) return torch::Tensor();
  if (!row.defined() || row.numel() != width)
    throw std::invalid_argument("validation set " + std::to_string(set) + ": the model needs " + std::to_string(width) +
                                " " + what);
  return row.detach().to(torch::kCPU).reshape({1, width});
}

// The cells transported and the cells they are compared with.
struct ScoredSet {
  torch::Tensor source, target;
};

}  // namespace

torch::Tensor subsample_cells(const torch::Tensor& x, int64_t max_cells, std::mt19937_64& rng) {
  const torch::Tensor cells = x.detach().to(torch::kCPU, torch::kFloat);
  if (max_cells <= 0 || cells.size(0) <= max_cells) return cells;
  std::vector<int64_t> all(cells.size(0));
  std::iota(all.begin(), all.end(), 0);
  return cells.index_select(0, draw_rows(all, max_cells, rng));
}

double set_distance(DistanceMetric metric, const torch::Tensor& x, const torch::Tensor& y) {
  if (x.dim() != 2 || y.dim() != 2) throw std::invalid_argument("cell sets must be 2-d matrices");
  const torch::Tensor xc = column_major(x), yc = column_major(y);
  const MatView a = view_of(xc), b = view_of(yc);
  switch (metric) {
    case DistanceMetric::W1:
      return wasserstein(a, b, 1);
    case DistanceMetric::W2:
      return wasserstein(a, b, 2);
    case DistanceMetric::MMD:
      return mmd_rbf(a, b, default_mmd_gammas());
    case DistanceMetric::Energy:
      return energy_distance(a, b);
  }
  throw std::invalid_argument("unknown distance metric");
}

Validator flow_validator(const FlowModel& model, const std::vector<FlowHoldout>& sets, const ValidationConfig& config) {
  if (sets.empty()) throw std::invalid_argument("validation: no held-out sets");
  const int64_t dim = model.config.network.dim, cond_dim = model.config.network.cond_dim;
  const std::vector<double>& times = model.config.times;
  std::mt19937_64 rng(config.seed);
  std::vector<ScoredSet> scored;
  std::vector<torch::Tensor> conds;
  std::vector<std::vector<double>> intervals;
  for (size_t i = 0; i < sets.size(); ++i) {
    const FlowHoldout& s = sets[i];
    check_cells(s.source, dim, i, "source");
    check_cells(s.target, dim, i, "target");
    scored.push_back(
        {subsample_cells(s.source, config.max_cells, rng), subsample_cells(s.target, config.max_cells, rng)});
    const torch::Tensor cond = set_row(s.cond, cond_dim, i, "conditioning values");
    conds.push_back(cond.defined() ? cond.to(torch::kFloat).expand({scored.back().source.size(0), -1}) : cond);
    intervals.push_back({std::isnan(s.t0) ? times.front() : s.t0, std::isnan(s.t1) ? times.back() : s.t1});
  }
  return [&model, scored, conds, intervals, config](int64_t) {
    double sum = 0;
    for (size_t i = 0; i < scored.size(); ++i) {
      const auto pred = transport(model, scored[i].source, intervals[i], conds[i], config.solver, config.threads);
      sum += set_distance(config.metric, pred.back(), scored[i].target);
    }
    return sum / static_cast<double>(scored.size());
  };
}

Validator population_validator(PopulationModel& model, const std::vector<PopulationHoldout>& sets,
                               const ValidationConfig& config) {
  if (sets.empty()) throw std::invalid_argument("validation: no held-out populations");
  const int64_t dim = model.config.network.dim;
  const auto n_labels = static_cast<int64_t>(model.population.label_levels.size());
  std::mt19937_64 rng(config.seed);
  std::vector<torch::Tensor> sources, label_rows, covariate_rows;
  std::vector<ScoredSet> scored;
  for (size_t i = 0; i < sets.size(); ++i) {
    const PopulationHoldout& s = sets[i];
    check_cells(s.source, dim, i, "source");
    check_cells(s.target, dim, i, "target");
    sources.push_back(s.source.detach().to(torch::kCPU, torch::kFloat));
    scored.push_back(
        {subsample_cells(s.source, config.max_cells, rng), subsample_cells(s.target, config.max_cells, rng)});
    if (n_labels > 0) label_rows.push_back(set_row(s.labels, n_labels, i, "label codes").to(torch::kLong));
    if (model.population.covariates > 0)
      covariate_rows.push_back(set_row(s.covariates, model.population.covariates, i, "covariates").to(torch::kFloat));
  }
  const torch::Tensor labels = label_rows.empty() ? torch::Tensor() : torch::cat(label_rows);
  const torch::Tensor covariates = covariate_rows.empty() ? torch::Tensor() : torch::cat(covariate_rows);
  population_condition(model, sources, labels, covariates);  // refuses unusable sets now, not mid-fit
  const std::vector<double> interval{model.config.times.front(), model.config.times.back()};
  return [&model, sources, scored, labels, covariates, interval, config](int64_t) {
    // Embedded with the current weights, each population from its own source cells, as prediction does.
    const torch::Tensor cond = population_condition(model, sources, labels, covariates);
    const FlowModel flow = model.flow();
    double sum = 0;
    for (size_t i = 0; i < scored.size(); ++i) {
      const torch::Tensor rows = cond[static_cast<int64_t>(i)].unsqueeze(0).expand({scored[i].source.size(0), -1});
      const auto pred = transport(flow, scored[i].source, interval, rows, config.solver, config.threads);
      sum += set_distance(config.metric, pred.back(), scored[i].target);
    }
    return sum / static_cast<double>(scored.size());
  };
}

}  // namespace popflow
