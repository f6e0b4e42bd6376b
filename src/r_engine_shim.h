// TEMPORARY: the engine's text readers that src/core/config_text.h is about
// to provide (flow/train/solver configuration from "key=value" text), written
// against its declarations so that the glue builds before that lands. Delete
// this file (and its #include in r_glue.h) when merging the engine change.
#pragma once
#include <map>
#include <stdexcept>
#include <string>

#include "core/config.h"
#include "core/model.h"

namespace popflow {

inline FlowConfig flow_config_from_text(const std::string& text) { return config_from_text(text); }
inline std::string flow_config_to_text(const FlowConfig& config) { return config_to_text(config); }

inline TrainConfig train_config_from_text(const std::string& text) {
  const ConfigText cfg(text, "training configuration");
  TrainConfig t;
  t.steps = cfg.count("steps", 1, 1e15);
  t.batch_size = cfg.count("batch_size", 1, 1e12);
  t.groups_per_step = cfg.count("groups_per_step", 1, 1e12);
  t.lr = cfg.number("lr");
  t.weight_decay = cfg.number("weight_decay");
  t.clip_norm = cfg.number("clip_norm");
  t.ema_decay = cfg.number("ema_decay");
  t.seed = static_cast<uint64_t>(cfg.number("seed"));
  t.threads = static_cast<int>(cfg.count("threads", 1, 1e6));
  t.device = cfg.value("device");
  t.time_limit_s = cfg.number("time_limit");
  return t;
}

inline SolverConfig solver_config_from_text(const std::string& text) {
  static const std::map<std::string, SolverKind> kinds{{"euler", SolverKind::Euler},
                                                       {"heun", SolverKind::Heun},
                                                       {"midpoint", SolverKind::Midpoint},
                                                       {"rk4", SolverKind::RK4},
                                                       {"dopri5", SolverKind::Dopri5}};
  const ConfigText cfg(text, "solver configuration");
  SolverConfig s;
  auto it = kinds.find(cfg.value("solver"));
  if (it == kinds.end()) throw std::invalid_argument("unknown solver '" + cfg.value("solver") + "'");
  s.kind = it->second;
  s.steps = cfg.count("steps", 1, 1e12);
  s.atol = cfg.number("atol");
  s.rtol = cfg.number("rtol");
  s.max_steps = cfg.count("max_steps", 1, 1e15);
  s.chunk_size = cfg.count("chunk_size", 1, 1e15);
  return s;
}

}  // namespace popflow
