// The median of repeated timings, shared by the bench programs that time small
// pieces of work (popflow_step_limits, popflow_graph_bench).
#pragma once

#include <algorithm>
#include <utility>
#include <vector>

namespace bench {

// The median of a set of timings (the upper one of an even count; 0 for none).
inline double median(std::vector<double> t) {
  if (t.empty()) return 0.0;
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Median of `reps` timings of `f` in seconds by the clock `now` (a function
// returning seconds), after one warm-up call.
template <class Clock, class F>
double median_time(Clock&& now, F&& f, int reps) {
  f();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const double s = now();
    f();
    t.push_back(now() - s);
  }
  return median(std::move(t));
}

}  // namespace bench
