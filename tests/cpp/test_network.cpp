// The velocity network (network.h) and its optimiser (optimizer.h).
#include <torch/torch.h>

#include <cmath>

#include "check.h"
#include "fixtures.h"
#include "network.h"
#include "optimizer.h"
#include "scratch.h"
#include "selu_cpu.h"

using namespace popflow;
using namespace fixtures;

TEST_CASE("network: shapes, time embedding and conditioning") {
  torch::manual_seed(20);
  NetworkConfig nc;
  nc.dim = 3;
  nc.width = 8;
  nc.depth = 2;
  nc.time_dim = 6;
  nc.fourier_features = 4;
  nc.cond_dim = 2;
  for (bool residual : {false, true}) {
    nc.residual = residual;
    VectorField net(nc);
    PF_CHECK(net->input_size() == 3 + 6 + 4 + 2);
    auto out = net->forward(torch::randn({5, 3}), torch::rand({5}), torch::randn({5, 2}));
    PF_CHECK(out.size(0) == 5 && out.size(1) == 3);
    PF_CHECK_THROWS_AS(net->forward(torch::randn({5, 3}), torch::rand({5})), std::invalid_argument);
  }
  auto emb = time_embedding(torch::tensor({0.0, 0.5}), 8);
  PF_CHECK(emb.size(0) == 2 && emb.size(1) == 8);
  PF_CHECK_NEAR(max_abs(emb[0].slice(0, 0, 4)), 0.0, 1e-7);     // sin(0)
  PF_CHECK_NEAR(max_abs(emb[0].slice(0, 4, 8) - 1), 0.0, 1e-7);  // cos(0)
  nc.time_dim = 3;
  PF_CHECK_THROWS_AS(VectorField(nc), std::invalid_argument);
}

TEST_CASE("selu_in_place: SELU and its backward to float precision; NaN, infinities and other tensors as LibTorch") {
  constexpr double alpha = 1.6732632423543772848170429916717, scale = 1.0507009873554804934193349852946;
  // A dense range, values near 0 and the clamp at -87, and an odd count (the vector loop's tail).
  auto x = torch::cat({torch::linspace(-100, 5, 200001),
                       torch::tensor({-1e-30f, -1e-8f, -1e-4f, -0.3466f, -86.9f, -87.f, -88.f, 0.f, 1e-30f}),
                       torch::randn({1001}) * 3});
  auto y = x.clone();
  selu_in_place(y);
  const auto xd = x.to(torch::kDouble);
  const auto ref = torch::where(xd > 0, scale * xd, scale * alpha * torch::expm1(xd));
  const auto rel = (y.to(torch::kDouble) - ref).abs() / ref.abs().clamp_min(1e-300);
  if (fast_selu_available()) {
    // About 2 float ulps at worst (measured 1.4e-7); LibTorch's own kernel
    // loses all relative precision near 0 (it returns 0 at -1e-8).
    PF_CHECK_LE(rel.max().item<double>(), 3e-7);
  } else {
    PF_CHECK(torch::equal(y, torch::selu(x)));
  }
  auto special = torch::tensor({NAN, INFINITY, -INFINITY, -1e30f, 1e30f, 2.f, -2.f, 0.5f, -0.5f});
  auto s = special.clone();
  selu_in_place(s);
  PF_CHECK(std::isnan(s[0].item<float>()));
  PF_CHECK(std::isinf(s[1].item<float>()) && s[1].item<float>() > 0);
  PF_CHECK_NEAR(s[2].item<double>(), -scale * alpha, 1e-6);
  PF_CHECK_NEAR(s[3].item<double>(), -scale * alpha, 1e-6);
  PF_CHECK_NEAR(s[4].item<double>() / 1e30, scale, 1e-6);
  // Tensors the kernel does not take go to LibTorch: double, non-contiguous.
  auto d = torch::randn({7, 5}, torch::kDouble), dd = d.clone();
  PF_CHECK(torch::equal(selu_in_place(dd), torch::selu(d)));
  auto base = torch::randn({6, 9});
  auto strided = base.clone().t();
  PF_CHECK(!strided.is_contiguous());
  PF_CHECK(torch::equal(selu_in_place(strided), torch::selu(base.t())));
  // The backward pass from the output: LibTorch's, to float rounding.
  auto grad = torch::randn_like(y), grad_ref = grad.clone();
  at::elu_backward_out(grad_ref, grad_ref, alpha, scale, 1.0, /*is_result=*/true, y);
  selu_backward_in_place(grad, y);
  PF_CHECK_NEAR(max_abs(grad - grad_ref) / max_abs(grad_ref), 0.0, 1e-6);
  auto gd = torch::randn({7, 5}, torch::kDouble), gd_ref = gd.clone(), yd = torch::selu(d);
  at::elu_backward_out(gd_ref, gd_ref, alpha, scale, 1.0, /*is_result=*/true, yd);
  PF_CHECK(torch::equal(selu_backward_in_place(gd, yd), gd_ref));
  // Every vector kernel this CPU runs gives the same bits (the AVX-512 one repeats the
  // AVX2 one's operations), forward and backward, tails included.
  for (VectorKernel kernel : {VectorKernel::Avx2, VectorKernel::Avx512}) {
    if (kernel > fastest_vector_kernel()) {
      auto z = x.clone();
      PF_CHECK_THROWS_AS(selu_in_place(z, kernel), std::invalid_argument);
      continue;
    }
    auto yk = x.clone(), gk = grad_ref.clone(), gf = grad_ref.clone();
    PF_CHECK(torch::equal(selu_in_place(yk, kernel), y));
    selu_backward_in_place(gf, y);
    PF_CHECK(torch::equal(selu_backward_in_place(gk, y, kernel), gf));
  }
  auto lt = x.clone();
  PF_CHECK(torch::equal(selu_in_place(lt, VectorKernel::Portable), torch::selu(x)));
  // The network's forward pass without autograd activates in place: the same outputs.
  NetworkConfig nc;
  nc.dim = 3;
  nc.width = 64;
  nc.depth = 2;
  nc.residual = true;
  torch::manual_seed(11);
  VectorField net(nc);
  auto px = torch::randn({33, 3}), pt = torch::rand({33});
  const auto with_grad = net->forward(px, pt).detach();
  torch::NoGradGuard no_grad;
  PF_CHECK_NEAR(max_abs(net->forward(px, pt) - with_grad) / max_abs(with_grad), 0.0, 1e-5);
}

TEST_CASE("FlatAdam: same trajectory as torch::optim::Adam, with EMA and clipping") {
  auto make = [] {
    torch::manual_seed(3);
    return torch::nn::Sequential(torch::nn::Linear(4, 8), torch::nn::Functional(torch::tanh), torch::nn::Linear(8, 2));
  };
  auto x = torch::randn({32, 4}), y = torch::randn({32, 2});
  auto a = make(), b = make();
  torch::optim::Adam ref(a->parameters(), torch::optim::AdamOptions(1e-2).weight_decay(1e-3));
  popflow::AdamSettings s;
  s.lr = 1e-2;
  s.weight_decay = 1e-3;
  {
    popflow::FlatAdam flat(*b, s);
    for (int step = 0; step < 25; ++step) {
      ref.zero_grad();
      torch::mse_loss(a->forward(x), y).backward();
      ref.step();
      flat.zero_grad();
      torch::mse_loss(b->forward(x), y).backward();
      double norm = flat.clip_grad_norm(0);
      PF_CHECK(std::isfinite(norm) && norm > 0);
      flat.step();
    }
  }
  auto pa = a->parameters(), pb = b->parameters();
  for (size_t i = 0; i < pa.size(); ++i) PF_CHECK(torch::allclose(pa[i], pb[i], 1e-5, 1e-6));
  // After release each parameter owns its storage again (saving writes only its own values).
  for (auto& p : pb) PF_CHECK(p.storage().nbytes() == static_cast<size_t>(p.numel()) * sizeof(float));
  // Clipping scales the gradient to the requested norm; the moving average lags the weights.
  auto c = make();
  popflow::AdamSettings se;
  se.ema_decay = 0.9;
  popflow::FlatAdam flat(*c, se);
  flat.zero_grad();
  torch::mse_loss(c->forward(x), y).backward();
  flat.clip_grad_norm(1e-3);
  double after = flat.clip_grad_norm(0);
  PF_CHECK_NEAR(after, 1e-3, 1e-6);
  auto before = c->parameters()[0].detach().clone();
  flat.step();
  auto stepped = c->parameters()[0].detach().clone();
  flat.use_average();
  auto averaged = c->parameters()[0].detach().clone();
  PF_CHECK(torch::allclose(averaged, 0.9 * before + 0.1 * stepped, 1e-6, 1e-7));
}

TEST_CASE("FlatAdam: remember_and_step's one pass saves and updates as remember() then step()") {
  // 8 x 9 + 9 = 81 parameters: whole 8-wide vectors and a tail, both kernels' paths.
  auto make = [] {
    torch::manual_seed(5);
    return torch::nn::Linear(8, 9);
  };
  for (double weight_decay : {0.0, 1e-2})
    for (double ema : {0.0, 0.95}) {
      popflow::AdamSettings s;
      s.lr = 5e-2;
      s.weight_decay = weight_decay;
      s.ema_decay = ema;
      auto a = make(), b = make();
      popflow::FlatAdam two_calls(*a, s), fused(*b, s);
      torch::manual_seed(6);
      for (int step = 1; step <= 12; ++step) {
        const auto g = torch::randn({fused.parameter_count()}) * (step % 3 == 0 ? 100.0 : 0.1);
        two_calls.gradient().copy_(g);
        fused.gradient().copy_(g);
        two_calls.remember();
        two_calls.step();
        fused.remember_and_step();
        PF_CHECK_MSG(torch::allclose(two_calls.weights(), fused.weights(), 1e-5, 1e-7), "step " << step);
        PF_CHECK(fused.gradient().equal(g));  // left as it was, as the loop's zero_grad() expects nothing else
      }
      const auto sa = two_calls.state(), sb = fused.state();
      PF_CHECK(torch::allclose(sa.m, sb.m, 1e-5, 1e-8) && torch::allclose(sa.v, sb.v, 1e-5, 1e-10));
      if (ema > 0) PF_CHECK(torch::allclose(sa.ema, sb.ema, 1e-5, 1e-7));
      // The step can be undone: back to the weights and moments before the last step.
      two_calls.rollback();
      fused.rollback();
      PF_CHECK(torch::allclose(two_calls.weights(), fused.weights(), 1e-5, 1e-7));
      PF_CHECK(torch::allclose(two_calls.state().v, fused.state().v, 1e-5, 1e-10));
      // And both count the same steps afterwards: the next update's bias corrections agree.
      const auto g = torch::randn({fused.parameter_count()});
      two_calls.gradient().copy_(g);
      fused.gradient().copy_(g);
      two_calls.remember();
      two_calls.step();
      fused.remember_and_step();
      PF_CHECK(torch::allclose(two_calls.weights(), fused.weights(), 1e-5, 1e-7));
    }
}

TEST_CASE("network: mse_with_gradient equals autograd's loss and gradient") {
  NetworkConfig nc;
  nc.dim = 3;
  nc.width = 16;
  nc.depth = 3;
  for (bool residual : {false, true})
    for (Activation act : {Activation::SELU, Activation::SiLU})
      for (int64_t extras : {0, 1}) {  // time embedding, Fourier features and conditioning, or raw t only
        nc.residual = residual;
        nc.activation = act;
        nc.time_dim = extras ? 4 : 0;
        nc.fourier_features = extras ? 4 : 0;
        nc.cond_dim = extras ? 2 : 0;
        torch::manual_seed(7);
        VectorField net(nc);
        auto x = torch::randn({40, 3}), t = torch::rand({40}), target = torch::randn({40, 3});
        auto cond = extras ? torch::randn({40, 2}) : torch::Tensor();
        for (auto& p : net->parameters()) p.mutable_grad() = torch::full_like(p, 5.0);  // overwritten, not added to
        torch::Tensor cond_grad;
        const double hand = net->mse_with_gradient(x, t, cond, target, &cond_grad).item<double>();
        PF_CHECK(cond_grad.defined() == static_cast<bool>(extras));
        if (extras) cond.requires_grad_(true);
        std::vector<torch::Tensor> by_hand;
        for (auto& p : net->parameters()) by_hand.push_back(p.grad().clone());
        for (auto& p : net->parameters()) p.mutable_grad() = torch::Tensor();
        auto loss = torch::mse_loss(net->forward(x, t, cond), target);
        loss.backward();
        // Float rounding apart (the hand pass takes SELU from popflow's own CPU kernel).
        PF_CHECK_NEAR(hand / loss.item<double>(), 1.0, 1e-6);
        if (extras) PF_CHECK_NEAR(max_abs(cond_grad - cond.grad()) / max_abs(cond.grad()), 0.0, 1e-5);
        auto params = net->parameters();
        PF_CHECK(params.size() == by_hand.size());
        for (size_t i = 0; i < params.size(); ++i) {
          const double scale = params[i].grad().abs().max().item<double>() + 1e-12;
          PF_CHECK_NEAR(max_abs(by_hand[i] - params[i].grad()) / scale, 0.0, 1e-5);
        }
      }
  nc.growth = true;
  VectorField grows(nc);
  PF_CHECK_THROWS_AS(grows->mse_with_gradient(torch::randn({4, 3}), torch::rand({4}), torch::randn({4, 2}),
                                              torch::randn({4, 3})),
                     std::logic_error);
}

TEST_CASE("network: mse_with_gradient's kept buffers follow batch size, network and activation") {
  // The hand-written gradient reuses per-thread buffers from call to call:
  // calls that change the batch, the network or its activation in turn must
  // each still give autograd's gradient.
  const ScratchScope scope;
  NetworkConfig nc;
  nc.dim = 2;
  nc.width = 8;
  nc.depth = 2;
  nc.time_dim = 0;
  torch::manual_seed(3);
  VectorField selu(nc);
  nc.activation = Activation::SiLU;
  nc.residual = true;
  VectorField silu(nc);
  int call = 0;
  for (VectorField* net : {&selu, &silu, &selu, &selu, &silu})
    for (int64_t n : {12, 5}) {
      auto x = torch::randn({n, 2}), t = torch::rand({n}), target = torch::randn({n, 2});
      const double hand = (*net)->mse_with_gradient(x, t, torch::Tensor(), target).item<double>();
      std::vector<torch::Tensor> by_hand;
      for (auto& p : (*net)->parameters()) by_hand.push_back(p.grad().clone());
      for (auto& p : (*net)->parameters()) p.mutable_grad() = torch::Tensor();
      auto loss = torch::mse_loss((*net)->forward(x, t), target);
      loss.backward();
      PF_CHECK_NEAR(hand, loss.item<double>(), 1e-6 * (1 + std::abs(hand)));  // float sums: a few ulps
      auto params = (*net)->parameters();
      for (size_t i = 0; i < params.size(); ++i)
        PF_CHECK_NEAR(max_abs(by_hand[i] - params[i].grad()), 0.0, 1e-5 * (1 + max_abs(params[i].grad())));
      ++call;
    }
  PF_CHECK(call == 10);
  // The buffers themselves: the same tensor while the shape fits, a new one otherwise.
  auto a = scratch_buffer("test", 0, {3, 4}, torch::kFloat);
  PF_CHECK(scratch_buffer("test", 0, {3, 4}, torch::kFloat).is_same(a));
  PF_CHECK(!scratch_buffer("test", 1, {3, 4}, torch::kFloat).is_same(a));
  PF_CHECK(!scratch_buffer("other", 0, {3, 4}, torch::kFloat).is_same(a));
  auto b = scratch_buffer("test", 0, {4, 3}, torch::kFloat);
  PF_CHECK(!b.is_same(a) && b.size(0) == 4);
  auto c = scratch_buffer("test", 0, {4, 3}, torch::kDouble);
  PF_CHECK(c.scalar_type() == torch::kDouble && scratch_buffer("test", 0, {4, 3}, torch::kDouble).is_same(c));
  release_scratch();
  PF_CHECK(!scratch_buffer("test", 0, {4, 3}, torch::kDouble).is_same(c));
}
