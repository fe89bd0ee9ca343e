// Does training in bf16 converge like fp32? Two copies of one MoE layer (same initial weights,
// same batches) learn to imitate a fixed random teacher MoE layer with Adam on the squared
// error (reported relative to the target's power); one runs its expert GEMMs in fp32, the other in
// bf16 (fp32 master weights and optimizer state in both). Prints both loss curves side by side.
//
//   train_bf16 [steps=400] [tokens=256]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "moe/gemm_bf16.h"
#include "moe/moe_layer.h"
#include "moe/parallel.h"
#include "moe/rng.h"
#include "moe/tensor.h"

namespace {

constexpr double kLr = 3e-3;
constexpr int kBatches = 8;

moe::MoeConfig config(moe::ComputeDtype dt) {
  moe::MoeConfig c;
  c.hidden_size = 128;
  c.moe_intermediate_size = 256;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.compute_dtype = dt;
  return c;
}

struct Adam {
  explicit Adam(int64_t n) : m(size_t(n), 0.f), v(size_t(n), 0.f) {}
  void step(std::vector<float>& w, std::vector<float>& g, double lr) {
    ++t;
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    const double c1 = 1 - std::pow(b1, t), c2 = 1 - std::pow(b2, t);
    for (size_t i = 0; i < w.size(); ++i) {
      m[i] = float(b1 * m[i] + (1 - b1) * g[i]);
      v[i] = float(b2 * v[i] + (1 - b2) * double(g[i]) * g[i]);
      w[i] -= float(lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps));
      g[i] = 0.f;
    }
  }
  std::vector<float> m, v;
  int t = 0;
};

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 400;
  const int64_t T = argc > 2 ? std::atoll(argv[2]) : 256;
  moe::set_num_threads(moe::num_threads());
  const int64_t d = config(moe::ComputeDtype::Float32).hidden_size;

  moe::MoeLayer<float> teacher(config(moe::ComputeDtype::Float32));
  moe::Rng trng(42);
  teacher.init_weights(trng, 0.1);
  moe::MoeLayer<float> s32(config(moe::ComputeDtype::Float32));
  moe::MoeLayer<float> s16(config(moe::ComputeDtype::BFloat16));
  moe::Rng srng(7);
  s32.init_weights(srng, 0.02);
  s16.params().values() = s32.params().values();
  Adam adam32(s32.params().numel()), adam16(s16.params().numel());

  moe::Tensor<float> x({T, d}), target({T, d}), y({T, d}), dout({T, d}), dx({T, d});
  moe::ForwardOptions<float> infer, train;
  train.training = true;
  std::printf(
      "train_bf16: student MoE (d=128 ffn=256 E=8 k=2) imitates a fixed random teacher;\n"
      "loss = squared error / squared target (1 = predicting zeros),\n"
      "Adam lr 3e-3, %d steps over 8 fixed batches of %ld tokens, bf16 kernel %s, %d threads\n",
      steps, long(T), moe::bf16_kernel_name(moe::bf16_kernel()), moe::num_threads());
  std::printf("%6s %14s %14s %10s\n", "step", "loss fp32", "loss bf16", "bf16/fp32");
  double last32 = 0, last16 = 0;
  for (int step = 1; step <= steps; ++step) {
    // A fixed training set of kBatches batches, cycled: the curves show fitting, not noise.
    moe::Rng data(1000 + uint64_t(step % kBatches));
    data.fill_normal(x.data(), T * d);
    teacher.forward(x.view(), target.view(), infer);
    double target_power = 0;
    for (int64_t i = 0; i < T * d; ++i) target_power += double(target[i]) * target[i];
    double loss[2] = {0, 0};
    int which = 0;
    for (auto* s : {&s32, &s16}) {
      s->forward(x.view(), y.view(), train);
      double l = 0;
      const double scale = 2.0 / double(T * d);
      for (int64_t i = 0; i < T * d; ++i) {
        const double e = double(y[i]) - target[i];
        l += e * e;
        dout[i] = float(scale * e);
      }
      loss[which++] = l / target_power;  // relative: 1.0 = predicting zeros
      s->backward(dout.view(), dx.view());
    }
    adam32.step(s32.params().values(), s32.params().grads(), kLr);
    adam16.step(s16.params().values(), s16.params().grads(), kLr);
    if (step > steps - 50) {  // the last 50 steps: Adam at this rate makes single steps noisy
      last32 += loss[0] / 50;
      last16 += loss[1] / 50;
    }
    if (step == 1 || step % 25 == 0)
      std::printf("%6d %14.6e %14.6e %10.4f\n", step, loss[0], loss[1], loss[1] / loss[0]);
  }
  std::printf("mean loss of the last 50 steps: fp32 %.6e bf16 %.6e (ratio %.4f)\n", last32, last16,
              last16 / last32);
  return 0;
}
