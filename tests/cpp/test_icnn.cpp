// The ICNN baseline (icnn.h): convexity, the gradient map, training in the
// one loop, configuration text and model files.
#include <torch/torch.h>

#include <string>

#include "check.h"
#include "icnn.h"
#include "model_file.h"

using namespace popflow;

namespace {

// The smallest second difference of net along `lines` random lines through
// random points, relative to the largest |value| seen.
double min_second_difference(Icnn& net, int64_t dim, int lines) {
  torch::NoGradGuard no_grad;
  double worst = 0;
  for (int l = 0; l < lines; ++l) {
    auto x0 = torch::randn({1, dim}, torch::kDouble) * 2;
    auto v = torch::randn({1, dim}, torch::kDouble);
    v = v / v.norm();
    auto t = torch::linspace(-3, 3, 121, torch::kDouble).unsqueeze(1);
    auto y = net->forward(x0 + t * v);
    auto d2 = y.slice(0, 2) - 2 * y.slice(0, 1, -1) + y.slice(0, 0, -2);
    worst = std::min(worst, d2.min().item<double>() / std::max(1.0, y.abs().max().item<double>()));
  }
  return worst;
}

// An ICNN with weights large enough to curve visibly along a line.
Icnn curved_icnn(int64_t dim) {
  Icnn net(dim, 16, 3);
  net->to(torch::kDouble);
  torch::NoGradGuard no_grad;
  for (auto& p : net->parameters()) p.normal_(0, 0.7);
  return net;
}

}  // namespace

TEST_CASE("icnn: convex along random lines once the hidden weights are non-negative; not before") {
  torch::manual_seed(7);
  auto net = curved_icnn(3);
  // Negative hidden weights make some lines concave: the check can fail.
  PF_CHECK_MSG(min_second_difference(net, 3, 40) < -1e-6, "random weights should break convexity");
  PF_CHECK(net->min_weight() < 0);
  PF_CHECK(net->negative_weight_penalty().item<double>() > 0);
  net->clamp_weights();
  PF_CHECK(net->min_weight() >= 0);
  PF_CHECK(net->negative_weight_penalty().item<double>() == 0);
  const double worst = min_second_difference(net, 3, 40);
  PF_CHECK_MSG(worst >= -1e-12, "clamped ICNN has a negative second difference " << worst);
}

TEST_CASE("icnn: icnn_gradient matches central finite differences") {
  torch::manual_seed(11);
  auto net = curved_icnn(2);
  net->clamp_weights();
  auto x = torch::randn({5, 2}, torch::kDouble);
  auto grad = icnn_gradient(net, x, false);
  const double h = 1e-6;
  torch::NoGradGuard no_grad;
  for (int j = 0; j < 2; ++j) {
    auto e = torch::zeros({1, 2}, torch::kDouble);
    e[0][j] = h;
    auto fd = (net->forward(x + e) - net->forward(x - e)) / (2 * h);
    PF_CHECK_MSG(torch::allclose(grad.select(1, j), fd, 1e-5, 1e-6), "dimension " << j);
  }
}

TEST_CASE("icnn: min-max training runs in the loop; g clamped stays convex; resume refused") {
  torch::manual_seed(3);
  IcnnConfig c;
  c.width = 16;
  c.depth = 2;
  c.inner_steps = 3;
  c.clamp_g = true;
  auto model = make_icnn_model(c, "cpu");
  auto source = torch::randn({200, 2});
  auto target = torch::randn({200, 2}) * 0.5 + torch::tensor({2.0f, -1.0f});
  TrainConfig tc;
  tc.steps = 80;
  tc.batch_size = 64;
  tc.lr = 1e-2;
  auto res = train_icnn(*model, source, target, tc);
  PF_CHECK(res.status == "completed" && res.steps_done == 80 && res.loss.size() == 80);
  PF_CHECK(model->train_state.step == 0);  // nothing to resume from
  PF_CHECK(model->net->g->min_weight() >= 0 && model->net->f->min_weight() >= 0);
  // The map moved the source mean towards the target's.
  auto mapped = icnn_transport(*model, source, 64, 1);
  PF_CHECK(mapped.sizes() == source.sizes());
  const double before = (source.mean(0) - target.mean(0)).norm().item<double>();
  const double after = (mapped.mean(0) - target.mean(0)).norm().item<double>();
  PF_CHECK_MSG(after < 0.6 * before, "mean gap " << before << " -> " << after);
  tc.resume = true;
  PF_CHECK(check::thrown_message([&] { train_icnn(*model, source, target, tc); }).find("cannot be resumed") !=
           std::string::npos);
  tc.resume = false;
  PF_CHECK(check::thrown_message([&] { train_icnn(*model, source.slice(1, 0, 1), target, tc); })
               .find("features") != std::string::npos);
  auto bad = source.clone();
  bad[0][0] = std::numeric_limits<float>::quiet_NaN();
  PF_CHECK(check::thrown_message([&] { train_icnn(*model, bad, target, tc); }).find("NaN") != std::string::npos);
}

TEST_CASE("icnn: configuration text and model file round trip") {
  IcnnConfig c;
  c.dim = 3;
  c.width = 8;
  c.depth = 2;
  c.inner_steps = 7;
  c.g_penalty = 0.25;
  c.beta1 = 0.3;
  const IcnnConfig back = icnn_config_from_text(icnn_config_to_text(c));
  PF_CHECK(icnn_config_to_text(back) == icnn_config_to_text(c));
  PF_CHECK(check::thrown_message([&] { icnn_config_from_text(icnn_config_to_text(c) + "extra=1\n"); })
               .find("extra") != std::string::npos);
  PF_CHECK(check::thrown_message([] { icnn_config_from_text("dim=2\n"); }).find("width") != std::string::npos);

  torch::manual_seed(5);
  auto model = make_icnn_model(c, "cpu");
  const std::string bytes = save_icnn_model(*model, "fields");
  std::string meta;
  auto loaded = load_icnn_model(bytes, "cpu", &meta);
  PF_CHECK(meta == "fields");
  auto x = torch::randn({20, 3});
  PF_CHECK(torch::equal(icnn_transport(*model, x, 7, 1), icnn_transport(*loaded, x, 7, 1)));
  PF_CHECK(torch::equal(icnn_potential(*model, x, 100, 1), icnn_potential(*loaded, x, 100, 1)));
  std::string kind;
  unpack_model_file(bytes, &kind);
  PF_CHECK(kind == kIcnnModelKind);
  // Another kind of file is refused by name.
  const std::string other = pack_model_file("popflow-flow", {"a", "b", "c"});
  PF_CHECK(check::thrown_message([&] { load_icnn_model(other); }).find("not a popflow ICNN") != std::string::npos);
}
