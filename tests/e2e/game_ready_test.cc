// End-to-end: what makes sprites usable in a game, through the real daemon and spritectl:
// RGBA models (binary and soft alpha), palette lock, sprite sheets with their atlas.
#include <nlohmann/json.hpp>

#include <set>

#include "common/image.h"
#include "common/palette.h"
#include "core/sprite_finish.h"
#include "tests/e2e/daemon_fixture.h"

namespace spritediff::e2e {
namespace {

class GameReadyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new Daemon();
    daemon_->AddTinyModel("tiny32rgba", 4, 32);
    daemon_->Start(R"({"max_batch_rows": 16, "max_rows_per_request": 16})");
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(daemon_->Stop(), 0) << daemon_->Log();
    delete daemon_;
  }
  std::string Server() { return " --server " + daemon_->address(); }

  struct Answer {
    grpc::Status status;
    v1::Result result;
    std::vector<v1::Frame> frames;
  };
  Answer Sample(const v1::SampleRequest& req) {
    auto stub = v1::Sprites::NewStub(daemon_->channel());
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    auto reader = stub->Sample(&ctx, req);
    v1::SampleEvent ev;
    Answer a;
    while (reader->Read(&ev)) {
      if (ev.has_result()) a.result = ev.result();
      if (ev.has_frame()) a.frames.push_back(ev.frame());
    }
    a.status = reader->Finish();
    return a;
  }
  static v1::SampleRequest Request(const std::string& model, int count, uint64_t seed) {
    v1::SampleRequest r;
    r.set_model(model);
    r.set_count(count);
    r.set_steps(4);
    r.set_seed(seed);
    r.add_labels()->set_label("food");
    return r;
  }
  static Daemon* daemon_;
};
Daemon* GameReadyTest::daemon_ = nullptr;

std::vector<Image> Decode(const v1::Result& r) {
  std::vector<Image> out;
  for (const std::string& png : r.images()) {
    Result<Image> image = DecodePng(png);
    EXPECT_TRUE(image.ok());
    if (image.ok()) out.push_back(*image);
  }
  return out;
}

TEST_F(GameReadyTest, RgbaModelReportsFourChannelsAndFinishesAlphaAsAsked) {
  auto stub = v1::Sprites::NewStub(daemon_->channel());
  grpc::ClientContext ctx;
  v1::GetModelRequest get;
  get.set_name("tiny32rgba");
  v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModel(&ctx, get, &info).ok());
  EXPECT_EQ(info.channels(), 4u);
  EXPECT_EQ(info.image_size(), 32u);

  v1::SampleRequest req = Request("tiny32rgba", 6, 21);
  req.set_frame_every(2);
  req.set_include_x0(true);
  Answer binary = Sample(req);
  ASSERT_TRUE(binary.status.ok()) << binary.status.error_message();
  EXPECT_EQ(binary.result.channels(), 4u);
  EXPECT_EQ(binary.result.alpha(), v1::ALPHA_MODE_BINARY);
  int opaque = 0, transparent = 0;
  for (const Image& sprite : Decode(binary.result)) {
    ASSERT_EQ(sprite.channels, 4);
    ASSERT_EQ(sprite.width, 32);
    for (size_t p = 3; p < sprite.pixels.size(); p += 4) {
      ASSERT_TRUE(sprite.pixels[p] == 0 || sprite.pixels[p] == 255) << "partial alpha with binary finishing";
      (sprite.pixels[p] == 0 ? transparent : opaque)++;
      if (sprite.pixels[p] == 0) {
        ASSERT_EQ(sprite.pixels[p - 1] | sprite.pixels[p - 2] | sprite.pixels[p - 3], 0) << "colour under alpha 0";
      }
    }
  }
  EXPECT_GT(opaque, 0);
  EXPECT_GT(transparent, 0);
  // Frames and x0 previews are RGBA PNGs too.
  ASSERT_FALSE(binary.frames.empty());
  for (const v1::Frame& f : binary.frames) {
    ASSERT_EQ(f.images_size(), 6);
    ASSERT_EQ(f.x0_images_size(), 6);
    Result<Image> frame = DecodePng(f.images(0));
    Result<Image> x0 = DecodePng(f.x0_images(0));
    ASSERT_TRUE(frame.ok() && x0.ok());
    EXPECT_EQ(frame->channels, 4);
    EXPECT_EQ(x0->channels, 4);
  }

  req.set_alpha(v1::ALPHA_MODE_SOFT);
  Answer soft = Sample(req);
  ASSERT_TRUE(soft.status.ok());
  EXPECT_EQ(soft.result.alpha(), v1::ALPHA_MODE_SOFT);
  int partial = 0;
  for (const Image& sprite : Decode(soft.result)) {
    for (size_t p = 3; p < sprite.pixels.size(); p += 4) partial += sprite.pixels[p] != 0 && sprite.pixels[p] != 255;
  }
  EXPECT_GT(partial, 0) << "an untrained model's soft alpha is never all 0 or 255";

  // The 3-channel model keeps answering RGB.
  Answer rgb = Sample(Request("tiny", 2, 3));
  ASSERT_TRUE(rgb.status.ok());
  EXPECT_EQ(rgb.result.channels(), 3u);
  EXPECT_EQ(rgb.result.alpha(), v1::ALPHA_MODE_UNSPECIFIED);
  EXPECT_EQ(Decode(rgb.result)[0].channels, 4);  // DecodePng yields RGBA ...
  for (size_t p = 3; p < Decode(rgb.result)[0].pixels.size(); p += 4) {
    ASSERT_EQ(Decode(rgb.result)[0].pixels[p], 255);  // ... of an opaque RGB PNG
  }
}

TEST_F(GameReadyTest, PaletteLockMakesEveryResultPixelAPaletteColour) {
  std::vector<std::pair<std::string, std::vector<std::string>>> palettes = {
      {"pico-8", {}}, {"db16", {}}, {"db32", {}}, {"endesga-32", {}},
      {"", {"#000000", "#ffffff", "#ff0044", "#3e8948", "#124e89"}}};
  for (const std::string model : {"tiny", "tiny32rgba"}) {
    for (const auto& [name, colors] : palettes) {
      for (bool dither : {false, true}) {
        v1::SampleRequest req = Request(model, 4, 77);
        req.set_palette(name);
        for (const std::string& c : colors) req.add_palette_colors(c);
        req.set_dither(dither);
        req.set_frame_every(2);
        Answer a = Sample(req);
        ASSERT_TRUE(a.status.ok()) << model << " " << name << ": " << a.status.error_message();
        EXPECT_EQ(a.result.palette(), name.empty() ? "custom" : name);
        Result<std::optional<Palette>> palette = ResolvePalette(name, colors);
        ASSERT_TRUE(palette.ok() && palette->has_value());
        for (const Image& sprite : Decode(a.result)) {
          EXPECT_TRUE(UsesOnlyPalette(sprite, **palette)) << model << " " << (name.empty() ? "custom" : name);
        }
      }
    }
  }
}

TEST_F(GameReadyTest, BadPalettesAreInvalidArgumentNamingTheFieldWithTheValueBounded) {
  const std::string huge(1 << 20, 'x');
  struct Case {
    std::string name;
    std::vector<std::string> colors;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"", {""}, "palette_colors"},
      {"", {"#000000"}, "palette_colors"},
      {"", std::vector<std::string>(257, "#000000"), "palette_colors"},
      {"", {"#000000", "#12345"}, "palette_colors[1]"},
      {"", {"#000000", huge}, "palette_colors[1]"},
      {huge, {}, "palette"},
      {"nes", {}, "palette"},
      {"pico-8", {"#000000", "#ffffff"}, "palette and palette_colors"},
  };
  for (const Case& c : cases) {
    v1::SampleRequest req = Request("tiny", 1, 1);
    req.set_palette(c.name);
    for (const std::string& color : c.colors) req.add_palette_colors(color);
    Answer a = Sample(req);
    EXPECT_EQ(a.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field;
    EXPECT_EQ(a.status.error_message().rfind(c.field, 0), 0u) << a.status.error_message().substr(0, 200);
    EXPECT_LT(a.status.error_message().size(), 600u) << c.field;
  }
  v1::SampleRequest bad_alpha = Request("tiny32rgba", 1, 1);
  bad_alpha.set_alpha(static_cast<v1::AlphaMode>(9));
  Answer a = Sample(bad_alpha);
  EXPECT_EQ(a.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(a.status.error_message().rfind("alpha", 0), 0u);
}

// spritectl sample --sheet: the sheet's PNG and atlas agree with the sprite PNGs, pixel for pixel.
TEST_F(GameReadyTest, SpritectlSheetAndAtlasAgreeWithTheSprites) {
  const fs::path out = daemon_->root() / "sheet-out";
  Output run = RunCtl("sample" + Server() + " --model tiny32rgba --label food --label item:0.5 --count 7 --steps 3 "
                      "--seed 40 --palette db32 --sheet --columns 3 --out " + out.string());
  ASSERT_EQ(run.exit_code, 0) << run.text;
  Result<Image> sheet = ReadPng((out / "sheet.png").string());
  ASSERT_TRUE(sheet.ok());
  std::ifstream in(out / "sheet.json");
  const nlohmann::json atlas = nlohmann::json::parse(in);
  EXPECT_EQ(atlas["meta"]["image"], "sheet.png");
  EXPECT_EQ(atlas["meta"]["size"]["w"], sheet->width);
  EXPECT_EQ(atlas["meta"]["size"]["h"], sheet->height);
  ASSERT_EQ(atlas["frames"].size(), 7u);
  std::set<uint64_t> seeds;
  for (int i = 0; i < 7; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "sprite-%03d.png", i);
    Result<Image> sprite = ReadPng((out / name).string());
    ASSERT_TRUE(sprite.ok()) << name;
    const nlohmann::json& f = atlas["frames"][name];
    const int x = f["frame"]["x"], y = f["frame"]["y"], w = f["frame"]["w"], h = f["frame"]["h"];
    ASSERT_EQ(w, 32);
    ASSERT_EQ(h, 32);
    for (int dy = 0; dy < h; ++dy)
      for (int dx = 0; dx < w; ++dx)
        for (int c = 0; c < 4; ++c) ASSERT_EQ(sheet->at(x + dx, y + dy, c), sprite->at(dx, dy, c)) << name;
    const nlohmann::json& recipe = f["spritediff"];
    EXPECT_EQ(recipe["model"], "tiny32rgba");
    EXPECT_EQ(recipe["steps"], 3);
    EXPECT_EQ(recipe["palette"], "db32");
    EXPECT_EQ(recipe["alpha"], "binary");
    EXPECT_DOUBLE_EQ(recipe["labels"]["item"].get<double>(), 0.5);
    seeds.insert(recipe["seed"].get<uint64_t>());
  }
  EXPECT_EQ(seeds, (std::set<uint64_t>{40, 41, 42, 43, 44, 45, 46}));
  // The recipe makes one sprite again: sprite 4 alone, with its seed.
  const nlohmann::json& r4 = atlas["frames"]["sprite-004.png"]["spritediff"];
  const fs::path again = daemon_->root() / "sheet-again";
  Output one = RunCtl("sample" + Server() + " --model tiny32rgba --label food --label item:0.5 --count 1 --steps 3 "
                      "--palette db32 --seed " + std::to_string(r4["seed"].get<uint64_t>()) + " --out " + again.string());
  ASSERT_EQ(one.exit_code, 0) << one.text;
  Result<Image> a = ReadPng((out / "sprite-004.png").string());
  Result<Image> b = ReadPng((again / "sprite-000.png").string());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->pixels, b->pixels);
  // A bad palette through spritectl: one line naming the field, non-zero exit.
  Output bad = RunCtl("sample" + Server() + " --palette-colors '#12345,#000000' --out " + again.string());
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.text.find("palette_colors[0]"), std::string::npos) << bad.text;
}

}  // namespace
}  // namespace spritediff::e2e
