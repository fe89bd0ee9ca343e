// Checkpointer (checkpoint.h): the run directory's weight files. The RNG state travels as
// metadata text, its double bit for bit in hex.
#include "moe/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "moe/communicator.h"
#include "moe/error.h"
#include "moe/safetensors.h"

namespace moe {

namespace {

std::string rng_to_string(const Rng::State& s) {
  uint64_t spare;
  std::memcpy(&spare, &s.spare_normal, sizeof spare);
  return fmt::format("{:016x} {:016x} {:016x} {:016x} {:016x} {}", s.s[0], s.s[1], s.s[2], s.s[3],
                     spare, s.has_spare ? 1 : 0);
}

Rng::State rng_from_string(const std::string& text, const std::string& where) {
  Rng::State s;
  std::istringstream in(text);
  uint64_t spare = 0;
  int has = 0;
  in >> std::hex >> s.s[0] >> s.s[1] >> s.s[2] >> s.s[3] >> spare >> std::dec >> has;
  MOE_REQUIRE(!in.fail(), "{}: metadata rng = \"{}\" is malformed", where, text);
  std::memcpy(&s.spare_normal, &spare, sizeof spare);
  s.has_spare = has != 0;
  return s;
}

int64_t metadata_int(const SafeTensorsFile& f, const std::string& key) {
  const std::string& v = f.metadata(key);
  try {
    size_t used = 0;
    const long long x = std::stoll(v, &used);
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw Error(fmt::format("{}: metadata {} = \"{}\" is not an integer", f.path(), key, v));
}

}  // namespace

std::string Checkpointer::path() const {
  return world_ == 1 ? dir_ + "/checkpoint.safetensors"
                     : fmt::format("{}/checkpoint-rank{}-of-{}.safetensors", dir_, rank_, world_);
}

void Checkpointer::check_resume(bool resume, Communicator* world) const {
  int64_t have = std::filesystem::exists(path()) ? 1 : 0;
  if (world) world->allreduce_sum(&have, 1);
  if (!resume && have > 0)
    throw Error(fmt::format(
        "{}: a checkpoint exists; pass --resume to continue it or choose another --out", path()));
  if (resume && have < world_)
    throw Error(fmt::format("{}: no checkpoint to resume from{}", path(),
                            world_ > 1 ? " (for every rank)" : ""));
}

void Checkpointer::save_model(SafeTensorsWriter& weights, const std::string& format,
                              const std::string& config) const {
  weights.set_metadata("format", format);
  if (!config.empty()) weights.set_metadata("config", config);
  weights.write(dir_ + "/model.safetensors");
}

void Checkpointer::save(const ModelConfig& cfg, Transformer<float>& model, const AdamW<float>& opt,
                        int step, const Rng& rng, const BatchSampler::State& sampler) const {
  model.gather_full_weights();
  const std::string config = model_config_to_json(cfg).dump();
  if (rank_ == 0) {
    // Before the checkpoint: a process killed between the two leaves newer weights, which
    // --resume writes again identically.
    SafeTensorsWriter m;
    model.save_weights(m, DType::F32);
    save_model(m, "pt", config);
  }
  SafeTensorsWriter w;
  model.save_weights(w, DType::F32);
  opt.save(w);
  w.set_metadata("format", "moe-checkpoint");
  w.set_metadata("version", "1");
  w.set_metadata("config", config);
  w.set_metadata("step", std::to_string(step));
  w.set_metadata("rng", rng_to_string(rng.state()));
  w.set_metadata("sampler.epoch", std::to_string(sampler.epoch));
  w.set_metadata("sampler.cursor", std::to_string(sampler.cursor));
  w.write(path());
}

int Checkpointer::load(const ModelConfig& cfg, Transformer<float>& model, AdamW<float>& opt,
                       Rng& rng, BatchSampler::State& sampler) const {
  const SafeTensorsFile f = SafeTensorsFile::open(path());
  MOE_REQUIRE(f.metadata().count("format") && f.metadata("format") == "moe-checkpoint",
              "{}: not a moe checkpoint (metadata format is missing or wrong)", f.path());
  MOE_REQUIRE(f.metadata("version") == "1",
              "{}: checkpoint version {} is not supported (expected 1)", f.path(),
              f.metadata("version"));
  // The model must be the same shape; training keys (steps, lr) may change on resume.
  nlohmann::json saved = nlohmann::json::parse(f.metadata("config"));
  nlohmann::json now = model_config_to_json(cfg);
  saved.erase("training");
  now.erase("training");
  for (auto it = now.begin(); it != now.end(); ++it)
    MOE_REQUIRE(saved.contains(it.key()) && saved[it.key()] == it.value(),
                "{}: config key {} is {} in the checkpoint but {} now", f.path(), it.key(),
                saved.contains(it.key()) ? saved[it.key()].dump() : "absent", it.value().dump());
  model.load_weights(f);
  opt.load(f);
  rng.set_state(rng_from_string(f.metadata("rng"), f.path()));
  sampler.epoch = static_cast<uint64_t>(metadata_int(f, "sampler.epoch"));
  sampler.cursor = static_cast<uint64_t>(metadata_int(f, "sampler.cursor"));
  return static_cast<int>(metadata_int(f, "step"));
}

}  // namespace moe
