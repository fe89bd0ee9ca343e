// The ViT-MoE training loop (vit_trainer.h). Batches are drawn with replacement from the
// training split by an Rng of training.seed, so a run is reproducible for a seed and thread
// count; the test split is evaluated in a fixed order.
#include "moe/vit_trainer.h"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "moe/checkpoint.h"
#include "moe/error.h"
#include "moe/optimizer.h"
#include "moe/safetensors.h"
#include "moe/train_metrics.h"

namespace moe {

namespace {
void write_text(const std::string& path, const std::string& s) {
  write_file_atomic(path, s.data(), s.size());
}

int argmax(const float* v, int n) {
  return static_cast<int>(std::max_element(v, v + n) - v);
}
}  // namespace

VitEval evaluate_vit(VitModel<float>& model, const ImageSet& set, int batch_size) {
  const VitConfig& c = model.config();
  const int K = c.num_classes(), E = c.moe.num_experts, S = c.seq_len();
  const int64_t pix = int64_t{set.image_size} * set.image_size;
  VitEval ev;
  for (int l = 0; l < c.num_hidden_layers; ++l)
    if (c.is_moe_layer(l)) {
      ev.moe_layers.push_back(l);
      ev.expert_class.emplace_back(static_cast<size_t>(E) * K, 0);
    }
  int64_t correct = 0, batches = 0;
  double loss = 0, dropped = 0;
  std::vector<int> kept, expert;
  for (int64_t i0 = 0; i0 < set.size(); i0 += batch_size) {
    const int B = static_cast<int>(std::min<int64_t>(batch_size, set.size() - i0));
    model.forward(set.pixels.data() + i0 * pix, set.labels.data() + i0, B, false, nullptr);
    loss += model.ce_loss() * B;
    dropped += model.dropped_fraction();
    ++batches;
    for (int b = 0; b < B; ++b)
      correct += argmax(model.logits().data() + int64_t{b} * K, K) == set.labels[i0 + b];
    for (size_t m = 0; m < ev.moe_layers.size(); ++m) {
      model.token_routing(ev.moe_layers[m], kept, expert);
      for (int64_t t = 0; t < int64_t{B} * S; ++t)
        if (expert[t] >= 0) ++ev.expert_class[m][expert[t] * K + set.labels[i0 + t / S]];
    }
  }
  ev.accuracy = static_cast<double>(correct) / set.size();
  ev.loss = loss / set.size();
  ev.dropped_fraction = batches > 0 ? dropped / batches : 0;
  return ev;
}

int write_patch_svg(VitModel<float>& model, const ImageSet& set, int layer, int count,
                    int batch_size, const std::string& path, const std::string& title) {
  const VitConfig& c = model.config();
  const int B = static_cast<int>(std::min<int64_t>(batch_size, set.size()));
  count = std::min(count, B);
  model.forward(set.pixels.data(), set.labels.data(), B, false, nullptr);
  std::vector<int> kept, expert;
  model.token_routing(layer, kept, expert);
  const int px = 6, n = set.image_size, P = c.patch_size, g = n / P, S = c.seq_len();
  const int off = c.pooling == VitPooling::Cls ? 1 : 0;
  const int full = c.router_type == VitRouter::TopK ? c.moe.num_experts_per_tok : 1;
  const int cell = n * px + 12, W = count * cell + 12, H = n * px + 60;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
      "font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" "
      "fill=\"white\"/>\n<text x=\"6\" y=\"14\">{}</text>\n",
      W, H, title);
  int dropped_total = 0;
  for (int i = 0; i < count; ++i) {
    // Images spread evenly over the batch: routing by position drops the batch's last images.
    const int im = i * B / count;
    const int x0 = 6 + i * cell, y0 = 22;
    const float* img = set.image(im);
    // Ink in 8 gray levels, one path per level in image-pixel units (scaled by px), and the
    // lightest level left white: keeps the file small (tens of KB) and the noise visible.
    svg += fmt::format("<g transform=\"translate({},{}) scale({})\">", x0, y0, px);
    for (int level = 1; level < 8; ++level) {
      std::string d;
      for (int y = 0; y < n; ++y)
        for (int x = 0; x < n; ++x)
          if (std::min(7, static_cast<int>(img[y * n + x] * 8)) == level)
            d += fmt::format("M{} {}h1v1h-1z", x, y);
      const int v = 255 - (level * 255 + 3) / 7;
      if (!d.empty()) svg += fmt::format("<path fill=\"rgb({0},{0},{0})\" d=\"{1}\"/>", v, d);
    }
    svg += "</g>";
    svg += "\n";
    int dropped = 0;
    for (int p = 0; p < g * g; ++p) {
      const int k = kept[static_cast<size_t>(im) * S + off + p];
      const char* color = k < 0 || k >= full ? "#2a2" : k == 0 ? "#e22" : "#f90";
      dropped += k == 0;
      const char* fill = k == 0 ? "rgba(230,30,30,0.35)" : "none";
      svg += fmt::format(
          "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"{}\" "
          "stroke-width=\"1.5\"/>",
          x0 + (p % g) * P * px + 1, y0 + (p / g) * P * px + 1, P * px - 2, P * px - 2, fill,
          color);
    }
    dropped_total += dropped;
    svg += fmt::format("\n<text x=\"{}\" y=\"{}\">#{} of {} | dropped {}/{}</text>\n", x0,
                       y0 + n * px + 16, im, B, dropped, g * g);
  }
  svg += "</svg>\n";
  write_text(path, svg);
  return dropped_total;
}

VitRunResult train_vit(const VitConfig& config, const VitTrainOptions& opt) {
  config.validate("config");
  auto log = [&](const std::string& s) {
    if (opt.log) opt.log(s);
  };
  std::filesystem::create_directories(opt.out_dir);
  write_text(opt.out_dir + "/config.json", vit_config_to_json(config).dump(2) + "\n");
  const auto t_data = std::chrono::steady_clock::now();
  ImageData data = make_image_data(config.dataset);
  log(fmt::format(
      "data: {} train / {} test images {}x{}, {} classes ({:.1f} s)", data.train.size(),
      data.test.size(), config.dataset.image_size, config.dataset.image_size, config.num_classes(),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_data).count()));

  const VitTrainConfig& tc = config.training;
  const TrainConfig t = tc.as_train_config();
  VitModel<float> model(config);
  Rng rng(tc.seed);
  model.init_weights(rng);
  AdamW<float> adam(model.parameters(), t);
  log(fmt::format("model: {} parameters, router_type {}, {} tokens per image",
                  model.num_parameters(),
                  vit_config_to_json(config)["router_type"].get<std::string>(), config.seq_len()));

  const int B = tc.batch_size;
  const int64_t pix = int64_t{config.dataset.image_size} * config.dataset.image_size;
  std::vector<float> images(static_cast<size_t>(B * pix));
  std::vector<int32_t> labels(static_cast<size_t>(B));
  Rng data_rng(tc.seed ^ 0xda7a5eedULL);
  MetricsWriter metrics(opt.out_dir);
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  VitRunResult res;
  for (int step = 0; step < tc.max_steps; ++step) {
    for (int b = 0; b < B; ++b) {
      const auto i = static_cast<int64_t>(data_rng.below(static_cast<uint64_t>(data.train.size())));
      std::copy_n(data.train.image(i), pix, images.data() + b * pix);
      labels[b] = data.train.labels[i];
    }
    model.zero_grad();
    const double loss = model.forward(images.data(), labels.data(), B, true, &rng);
    MOE_CHECK(std::isfinite(loss), "vit training: loss is {} at step {}", loss, step);
    int correct = 0;
    for (int b = 0; b < B; ++b)
      correct += argmax(model.logits().data() + int64_t{b} * config.num_classes(),
                        config.num_classes()) == labels[b];
    const double dropped = model.dropped_fraction();
    model.backward(1.0);
    const double gnorm = t.grad_clip > 0 ? clip_grad_norm(model.parameters(), t.grad_clip)
                                         : global_grad_norm(model.parameters());
    const double lr = learning_rate_at(t, step);
    adam.step(lr);
    nlohmann::json line = {{"step", step + 1},
                           {"loss", loss},
                           {"ce", model.ce_loss()},
                           {"aux", model.aux_loss()},
                           {"train_acc", static_cast<double>(correct) / B},
                           {"dropped_fraction", dropped},
                           {"lr", lr},
                           {"grad_norm", gnorm},
                           {"time", elapsed()}};
    const bool last = step + 1 == tc.max_steps;
    if (last || (tc.eval_every > 0 && (step + 1) % tc.eval_every == 0)) {
      const VitEval ev = evaluate_vit(model, data.test, B);
      line["test_acc"] = ev.accuracy;
      line["test_loss"] = ev.loss;
      line["test_dropped_fraction"] = ev.dropped_fraction;
      log(
          fmt::format("step {:5d}  loss {:.4f}  train_acc {:.3f}  test_acc {:.4f}  dropped {:.3f}  "
                      "{:.1f} s",
                      step + 1, loss, static_cast<double>(correct) / B, ev.accuracy,
                      ev.dropped_fraction, elapsed()));
      if (last) {
        res.test_accuracy = ev.accuracy;
        res.test_loss = ev.loss;
        res.test_dropped_fraction = ev.dropped_fraction;
        nlohmann::json ec = nlohmann::json::object();
        ec["classes"] = data.class_names;
        ec["num_experts"] = config.moe.num_experts;
        ec["note"] =
            "layers.<l>[e][c]: test tokens of class c whose main expert in MoE block l is e "
            "(top_k: first choice; expert_choice: highest gate that took it; soft: slot of "
            "largest combine weight)";
        for (size_t m = 0; m < ev.moe_layers.size(); ++m) {
          nlohmann::json rows = nlohmann::json::array();
          const int K = config.num_classes();
          for (int e = 0; e < config.moe.num_experts; ++e)
            rows.push_back(std::vector<int64_t>(ev.expert_class[m].begin() + e * K,
                                                ev.expert_class[m].begin() + (e + 1) * K));
          ec["layers"][std::to_string(ev.moe_layers[m])] = rows;
        }
        write_text(opt.out_dir + "/expert_classes.json", ec.dump(1) + "\n");
        // The same table in words: each expert's three most frequent classes.
        std::string txt;
        const int K = config.num_classes();
        for (size_t m = 0; m < ev.moe_layers.size(); ++m)
          for (int e = 0; e < config.moe.num_experts; ++e) {
            const int64_t* row = ev.expert_class[m].data() + int64_t{e} * K;
            int64_t total = 0;
            for (int k = 0; k < K; ++k) total += row[k];
            std::vector<int> order(static_cast<size_t>(K));
            for (int k = 0; k < K; ++k) order[k] = k;
            std::sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
            txt += fmt::format("block {} expert {}: {:6d} tokens", ev.moe_layers[m], e, total);
            for (int r = 0; r < 3 && total > 0; ++r)
              txt += fmt::format("  '{}' {:4.1f}%", data.class_names[order[r]],
                                 100.0 * row[order[r]] / total);
            txt += "\n";
          }
        write_text(opt.out_dir + "/expert_classes.txt", txt);
      }
    }
    metrics.write(line);
    if (step % 50 == 0 && !last)
      log(fmt::format(
          "step {:5d}  loss {:.4f}  train_acc {:.3f}  dropped {:.3f}  lr {:.2e}  {:.1f} s",
          step + 1, loss, static_cast<double>(correct) / B, dropped, lr, elapsed()));
  }
  res.train_seconds = elapsed();
  res.steps = tc.max_steps;
  res.parameters = model.num_parameters();
  SafeTensorsWriter w;
  model.save_weights(w);
  Checkpointer(opt.out_dir).save_model(w, "moe-vit");
  // Kept vs dropped patches of the first MoE block, when its routing can skip patches.
  const bool can_drop = (config.router_type == VitRouter::TopK && config.moe.capacity_factor > 0) ||
                        config.router_type == VitRouter::ExpertChoice;
  for (int l = 0; l < config.num_hidden_layers && can_drop; ++l) {
    if (!config.is_moe_layer(l)) continue;
    const int dropped = write_patch_svg(
        model, data.test, l, 8, B, opt.out_dir + "/patches.svg",
        fmt::format("MoE block {}: kept (green) / partly dropped (orange) / dropped (red) patches",
                    l));
    log(fmt::format("patches.svg: {} fully dropped patches in 8 test images", dropped));
    break;
  }
  // Inference-time capacity sweep: the trained weights in a model that differs only in
  // capacity_factor and drop_policy (the parameter lists have the same order and shapes).
  nlohmann::json sweep = nlohmann::json::array();
  if (config.router_type == VitRouter::TopK)
    for (double cf : tc.eval_capacity_factors)
      for (DropPolicy policy : {DropPolicy::BatchPriority, DropPolicy::Position}) {
        VitConfig c2 = config;
        c2.moe.capacity_factor = cf;
        c2.moe.drop_policy = policy;
        VitModel<float> m2(c2);
        for (size_t i = 0; i < m2.parameters().size(); ++i) {
          const auto& src = model.parameters()[i];
          std::copy_n(src.value, src.shape.numel(), m2.parameters()[i].value);
        }
        const VitEval ev = evaluate_vit(m2, data.test, B);
        const char* name = policy == DropPolicy::BatchPriority ? "batch_priority" : "position";
        sweep.push_back({{"capacity_factor", cf},
                         {"drop_policy", name},
                         {"test_accuracy", ev.accuracy},
                         {"test_dropped_fraction", ev.dropped_fraction}});
        log(fmt::format("test at capacity_factor {} with {}: accuracy {:.4f}, dropped {:.3f}", cf,
                        name, ev.accuracy, ev.dropped_fraction));
      }
  nlohmann::json summary = {{"test_accuracy", res.test_accuracy},
                            {"test_loss", res.test_loss},
                            {"test_dropped_fraction", res.test_dropped_fraction},
                            {"steps", res.steps},
                            {"parameters", res.parameters},
                            {"train_seconds", res.train_seconds}};
  if (!sweep.empty()) summary["capacity_sweep"] = sweep;
  write_summary(opt.out_dir, summary);
  return res;
}

}  // namespace moe
