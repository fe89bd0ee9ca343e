// The bundled image data set of the ViT encoder (vit.h): digits and capital letters rendered
// with FreeType from the DejaVu fonts Debian ships (fonts-dejavu-core), each image a glyph in
// a random font at a random size, rotation and offset, plus Gaussian pixel noise. Made on the
// fly from a seed, so a fresh machine needs no download and every run sees the same images.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace moe {

struct ImageDataConfig {
  int image_size = 28;                           // square images, side in pixels
  std::string classes = "0123456789ACEFHKLPRX";  // one class per character (no O/0, I/1 pairs)
  int train_size = 12000;
  int test_size = 2000;
  uint64_t seed = 7;
  double min_scale = 0.55, max_scale = 0.85;  // glyph em size as a share of image_size
  double max_shift = 0.10;                    // offset of the glyph center, share of image_size
  double max_rotation_deg = 8;
  double noise = 0.10;  // std of the Gaussian noise added to [0, 1] pixels (then clamped)
  std::string font_dir = "/usr/share/fonts/truetype/dejavu";
  // Font files under font_dir; the defaults are the six faces fonts-dejavu-core installs.
  std::vector<std::string> fonts = {"DejaVuSans.ttf",     "DejaVuSans-Bold.ttf",
                                    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
                                    "DejaVuSerif.ttf",    "DejaVuSerif-Bold.ttf"};
  void validate(const std::string& where) const;
};

// Reads the keys of j (the config's "dataset" object) over the defaults; an unknown key or a
// wrong type is a moe::Error naming `where` and the key.
ImageDataConfig image_data_config_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json image_data_config_to_json(const ImageDataConfig& c);

struct ImageSet {
  int image_size = 0, num_classes = 0;
  std::vector<float> pixels;    // [N, image_size * image_size], 0 = background, 1 = ink
  std::vector<int32_t> labels;  // [N]
  std::vector<int32_t> fonts;   // [N] index into ImageDataConfig::fonts
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  const float* image(int64_t i) const {
    return pixels.data() + i * static_cast<int64_t>(image_size) * image_size;
  }
};

struct ImageData {
  ImageSet train, test;
  std::vector<std::string> class_names;
};

// Renders both splits (train from seed, test from an independent stream of the same seed).
// A missing font file is a moe::Error naming it and the package that installs it.
ImageData make_image_data(const ImageDataConfig& c);

}  // namespace moe
