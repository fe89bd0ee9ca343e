// The step profile's names, sums and reports (step_profile.h).
#include "moe/step_profile.h"

#include <fmt/format.h>

namespace moe {

const char* step_part_name(StepPart p) {
  static constexpr const char* kNames[kStepParts] = {"embedding",
                                                     "norms and residual",
                                                     "attention",
                                                     "router",
                                                     "dispatch",
                                                     "experts",
                                                     "combine",
                                                     "shared experts",
                                                     "dense ffn",
                                                     "head and loss",
                                                     "embedding backward",
                                                     "norms and residual backward",
                                                     "attention backward",
                                                     "router backward",
                                                     "dispatch backward",
                                                     "experts backward",
                                                     "combine backward",
                                                     "shared experts backward",
                                                     "dense ffn backward",
                                                     "head and loss backward",
                                                     "optimizer",
                                                     "data"};
  return kNames[static_cast<int>(p)];
}

double StepProfile::accounted_seconds() const {
  double s = 0;
  for (double v : seconds_) s += v;
  return s;
}

std::string StepProfile::table() const {
  const double steps = static_cast<double>(std::max<int64_t>(steps_, 1));
  const double step = step_seconds_ > 0 ? step_seconds_ : 1.0;
  std::string out = fmt::format("{:<30} {:>10} {:>7}\n", "part", "ms/step", "%");
  auto row = [&](const char* name, double seconds) {
    out += fmt::format("{:<30} {:>10.2f} {:>6.1f}%\n", name, 1e3 * seconds / steps,
                       100.0 * seconds / step);
  };
  for (int p = 0; p < kStepParts; ++p) row(step_part_name(static_cast<StepPart>(p)), seconds_[p]);
  row("(unaccounted)", step_seconds_ - accounted_seconds());
  row("step", step_seconds_);
  return out;
}

nlohmann::json StepProfile::to_json() const {
  const double steps = static_cast<double>(std::max<int64_t>(steps_, 1));
  const double step = step_seconds_ > 0 ? step_seconds_ : 1.0;
  nlohmann::json parts = nlohmann::json::object(), order = nlohmann::json::array();
  for (int p = 0; p < kStepParts; ++p) {
    const char* name = step_part_name(static_cast<StepPart>(p));
    parts[name] = {{"ms", 1e3 * seconds_[p] / steps}, {"percent", 100.0 * seconds_[p] / step}};
    order.push_back(name);  // a JSON object's keys come back sorted
  }
  return {{"steps", steps_},
          {"step_ms", 1e3 * step_seconds_ / steps},
          {"accounted_ms", 1e3 * accounted_seconds() / steps},
          {"unaccounted_ms", 1e3 * (step_seconds_ - accounted_seconds()) / steps},
          {"parts", parts},
          {"order", order}};
}

}  // namespace moe
