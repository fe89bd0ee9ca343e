// Glyph images rendered with FreeType (images.h). Each image draws, from its own split's
// random stream: class, font, size, rotation, offset, then per-pixel noise. FreeType's
// anti-aliased 8-bit coverage is the ink value, so strokes have soft edges like scanned digits.
#include "moe/images.h"

#include <ft2build.h>
#include FT_FREETYPE_H

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/json_keys.h"
#include "moe/error.h"
#include "moe/rng.h"

namespace moe {

void ImageDataConfig::validate(const std::string& where) const {
  auto fail = [&](const char* key, const std::string& why) {
    throw Error(fmt::format("{}: dataset.{} {}", where, key, why));
  };
  if (image_size < 8 || image_size > 256)
    fail("image_size", fmt::format("must be in [8, 256], got {}", image_size));
  if (classes.size() < 2) fail("classes", "must hold at least two characters");
  if (std::set<char>(classes.begin(), classes.end()).size() != classes.size())
    fail("classes", fmt::format("has a repeated character: \"{}\"", classes));
  if (train_size <= 0) fail("train_size", fmt::format("must be positive, got {}", train_size));
  if (test_size <= 0) fail("test_size", fmt::format("must be positive, got {}", test_size));
  if (!(min_scale > 0 && min_scale <= max_scale && max_scale <= 1.5))
    fail("min_scale", fmt::format("and max_scale must satisfy 0 < min <= max <= 1.5, got {} {}",
                                  min_scale, max_scale));
  if (!(max_shift >= 0 && max_shift <= 0.5))
    fail("max_shift", fmt::format("must be in [0, 0.5], got {}", max_shift));
  if (!(max_rotation_deg >= 0 && max_rotation_deg <= 90))
    fail("max_rotation_deg", fmt::format("must be in [0, 90], got {}", max_rotation_deg));
  if (!(noise >= 0 && noise <= 1)) fail("noise", fmt::format("must be in [0, 1], got {}", noise));
  if (fonts.empty()) fail("fonts", "must name at least one font file");
}

namespace {
template <class V>
void visit(ImageDataConfig& c, V&& v) {
  v("image_size", c.image_size);
  v("classes", c.classes);
  v("train_size", c.train_size);
  v("test_size", c.test_size);
  v("seed", c.seed);
  v("min_scale", c.min_scale);
  v("max_scale", c.max_scale);
  v("max_shift", c.max_shift);
  v("max_rotation_deg", c.max_rotation_deg);
  v("noise", c.noise);
  v("font_dir", c.font_dir);
  v("fonts", c.fonts);
}

struct FtLibrary {
  FT_Library lib = nullptr;
  std::vector<FT_Face> faces;
  FtLibrary() { MOE_CHECK(FT_Init_FreeType(&lib) == 0, "images: FreeType failed to initialize"); }
  ~FtLibrary() {
    for (FT_Face f : faces) FT_Done_Face(f);
    FT_Done_FreeType(lib);
  }
  FtLibrary(const FtLibrary&) = delete;
  FtLibrary& operator=(const FtLibrary&) = delete;
};

void render_split(const ImageDataConfig& c, FtLibrary& ft, uint64_t seed, int n, ImageSet& out) {
  const int S = c.image_size, K = static_cast<int>(c.classes.size());
  const int F = static_cast<int>(ft.faces.size());
  out.image_size = S;
  out.num_classes = K;
  out.pixels.assign(static_cast<size_t>(n) * S * S, 0.0f);
  out.labels.resize(static_cast<size_t>(n));
  out.fonts.resize(static_cast<size_t>(n));
  Rng rng(seed);
  for (int i = 0; i < n; ++i) {
    const int label = static_cast<int>(rng.below(static_cast<uint64_t>(K)));
    const int font = static_cast<int>(rng.below(static_cast<uint64_t>(F)));
    const double scale = c.min_scale + (c.max_scale - c.min_scale) * rng.uniform();
    const double angle = (2 * rng.uniform() - 1) * c.max_rotation_deg * M_PI / 180.0;
    const double dx = (2 * rng.uniform() - 1) * c.max_shift * S;
    const double dy = (2 * rng.uniform() - 1) * c.max_shift * S;
    out.labels[i] = label;
    out.fonts[i] = font;
    FT_Face face = ft.faces[font];
    const auto px = static_cast<FT_UInt>(std::max(4.0, std::round(scale * S)));
    MOE_CHECK(FT_Set_Pixel_Sizes(face, 0, px) == 0, "images: cannot set size {}", px);
    FT_Matrix m;  // 16.16 fixed point rotation
    m.xx = static_cast<FT_Fixed>(std::cos(angle) * 65536.0);
    m.xy = static_cast<FT_Fixed>(-std::sin(angle) * 65536.0);
    m.yx = static_cast<FT_Fixed>(std::sin(angle) * 65536.0);
    m.yy = static_cast<FT_Fixed>(std::cos(angle) * 65536.0);
    FT_Set_Transform(face, &m, nullptr);
    const auto ch = static_cast<FT_ULong>(static_cast<unsigned char>(c.classes[label]));
    MOE_CHECK(FT_Load_Char(face, ch, FT_LOAD_RENDER) == 0, "images: cannot render '{}'",
              c.classes[label]);
    const FT_Bitmap& bm = face->glyph->bitmap;
    // Center the glyph's bitmap (not its advance box), then offset it.
    const int x0 = static_cast<int>(std::lround(S / 2.0 - bm.width / 2.0 + dx));
    const int y0 = static_cast<int>(std::lround(S / 2.0 - bm.rows / 2.0 + dy));
    float* img = out.pixels.data() + static_cast<size_t>(i) * S * S;
    for (unsigned r = 0; r < bm.rows; ++r)
      for (unsigned col = 0; col < bm.width; ++col) {
        const int y = y0 + static_cast<int>(r), x = x0 + static_cast<int>(col);
        if (y < 0 || y >= S || x < 0 || x >= S) continue;
        img[y * S + x] = bm.buffer[r * bm.pitch + col] / 255.0f;
      }
    for (int p = 0; p < S * S; ++p)
      img[p] = std::clamp(static_cast<float>(img[p] + c.noise * rng.normal()), 0.0f, 1.0f);
  }
}
}  // namespace

ImageDataConfig image_data_config_from_json(const nlohmann::json& j, const std::string& where) {
  ImageDataConfig c;
  MOE_REQUIRE(j.is_object(), "{}: dataset must be a JSON object", where);
  std::set<std::string> known;
  visit(c, [&](const char* key, auto&) { known.insert(key); });
  for (auto it = j.begin(); it != j.end(); ++it)
    MOE_REQUIRE(known.count(it.key()), "{}: dataset.{} is not a known key", where, it.key());
  // Types and integer ranges checked per key (a float where an int goes is an error, not UB).
  const std::string in = where + ": dataset";
  visit(c, JsonKeyReader{j, in});
  c.validate(where);
  return c;
}

nlohmann::json image_data_config_to_json(const ImageDataConfig& c) {
  nlohmann::json j;
  ImageDataConfig copy = c;
  visit(copy, [&](const char* key, auto& field) { j[key] = field; });
  return j;
}

ImageData make_image_data(const ImageDataConfig& c) {
  c.validate("dataset");
  FtLibrary ft;
  for (const auto& name : c.fonts) {
    const std::string path = c.font_dir + "/" + name;
    MOE_REQUIRE(std::filesystem::exists(path),
                "images: font {} not found (Debian package fonts-dejavu-core installs the DejaVu "
                "fonts; scripts/setup.sh lists it)",
                path);
    FT_Face face = nullptr;
    MOE_REQUIRE(FT_New_Face(ft.lib, path.c_str(), 0, &face) == 0, "images: FreeType cannot open {}",
                path);
    ft.faces.push_back(face);
  }
  ImageData d;
  for (char ch : c.classes) d.class_names.emplace_back(1, ch);
  render_split(c, ft, c.seed, c.train_size, d.train);
  // The test stream: the same seed through a different splitmix64 start, so it never repeats
  // the training draws.
  render_split(c, ft, c.seed ^ 0x9e3779b97f4a7c15ULL, c.test_size, d.test);
  return d;
}

}  // namespace moe
