// End-to-end fuzzing: thousands of randomized and malformed Sample and SubmitJob requests,
// from several threads, in bounded time. Every answer must be a proper status (a code the
// API uses, a bounded message), and the daemon must keep serving and stop cleanly.
#include <grpcpp/generic/generic_stub.h>

#include <future>
#include <iostream>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <set>

#include "tests/e2e/daemon_fixture.h"

namespace spritediff::e2e {
namespace {

class Fuzzer {
 public:
  explicit Fuzzer(uint64_t seed) : rng_(seed) {}

  uint32_t U32() {
    switch (Pick(6)) {
      case 0: return 0;
      case 1: return Pick(4);
      case 2: return Pick(100);
      case 3: return Pick(600);
      case 4: return UINT32_MAX - Pick(3);
      default: return static_cast<uint32_t>(rng_());
    }
  }
  float F32() {
    static const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 20.0f, 20.001f, 1e30f, -1e30f,
                                     std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                                     -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::denorm_min()};
    if (Pick(2) == 0) return specials[Pick(sizeof(specials) / sizeof(specials[0]))];
    return std::uniform_real_distribution<float>(-200.0f, 200.0f)(rng_);
  }
  std::string Str() {
    static const char* pieces[] = {"tiny", "hero", "food", "..", "/", "../../etc", "/etc/passwd", "%s%n", "\n",
                                   "\x01", "\xff\xfe", "spell", "mini", ".", "a/b", "\\"};
    std::string s;
    const int parts = static_cast<int>(Pick(5));
    for (int i = 0; i < parts; ++i) s += pieces[Pick(sizeof(pieces) / sizeof(pieces[0]))];
    if (Pick(8) == 0) s.push_back('\0');
    if (Pick(10) == 0) s += std::string(Pick(5) == 0 ? 200000 : Pick(3000), static_cast<char>('a' + Pick(26)));
    if (Pick(10) == 0) {
      for (int i = 0, n = static_cast<int>(Pick(64)); i < n; ++i) s += static_cast<char>(rng_());
    }
    return s;
  }
  uint32_t Pick(uint32_t n) { return n == 0 ? 0 : static_cast<uint32_t>(rng_() % n); }

  v1::SampleRequest Sample() {
    v1::SampleRequest r;
    if (Pick(3) == 0) r.set_model(Str());
    // Mostly small counts and steps so that valid requests stay cheap; sometimes anything.
    r.set_count(Pick(4) == 0 ? U32() : Pick(4));
    r.set_steps(Pick(8) == 0 ? U32() : 1 + Pick(3));
    r.set_sampler(static_cast<v1::Sampler>(Pick(5) == 0 ? static_cast<int>(rng_()) : static_cast<int>(Pick(3))));
    if (Pick(2) == 0) r.set_eta(F32());
    if (Pick(2) == 0) r.set_guidance_scale(F32());
    r.set_seed(Pick(2) == 0 ? 0 : rng_());
    r.set_frame_every(Pick(3) == 0 ? U32() : Pick(3));
    r.set_include_x0(Pick(2) == 0);
    for (int i = 0, n = static_cast<int>(Pick(4) == 0 ? Pick(100) : Pick(3)); i < n; ++i) {
      auto* l = r.add_labels();
      l->set_label(Str());
      if (Pick(2) == 0) l->set_weight(F32());
    }
    for (int i = 0, n = static_cast<int>(Pick(4) == 0 ? Pick(20) : 0); i < n; ++i) r.add_context(F32());
    return r;
  }

  v1::JobSpec Job() {
    v1::JobSpec s;
    s.set_model_name(Pick(3) == 0 ? Str() : "fz" + std::to_string(Pick(1000)));
    s.set_dataset(Pick(2) == 0 ? Str() : "nothing-here");
    s.set_image_size(Pick(2) == 0 ? U32() : 16);
    s.set_n_feat(U32());
    s.set_epochs(U32());
    s.set_batch_size(U32());
    if (Pick(2) == 0) s.set_lr(F32());
    if (Pick(2) == 0) s.set_context_dropout(F32());
    if (Pick(2) == 0) s.set_ema_decay(F32());
    s.set_checkpoint_every(U32());
    s.set_seed(rng_());
    if (Pick(3) == 0) s.set_base_model(Str());
    if (Pick(3) == 0) s.set_class_balance(Str());
    return s;
  }

  // Bytes that are often not a valid message of any kind: random, or a valid one cut or flipped.
  std::string Garbage(const std::string& valid) {
    std::string b = valid;
    switch (Pick(3)) {
      case 0:
        b.resize(Pick(64));
        for (char& c : b) c = static_cast<char>(rng_());
        break;
      case 1:
        if (!b.empty()) b.resize(Pick(static_cast<uint32_t>(b.size())));
        break;
      default:
        for (int i = 0; i < 4 && !b.empty(); ++i) b[Pick(static_cast<uint32_t>(b.size()))] ^= static_cast<char>(1 + Pick(255));
    }
    return b;
  }

 private:
  std::mt19937_64 rng_;
};

// Codes the API answers with; UNKNOWN (an escaped exception) or UNIMPLEMENTED would be bugs.
const std::set<grpc::StatusCode> kProper = {
    grpc::StatusCode::OK,          grpc::StatusCode::INVALID_ARGUMENT,   grpc::StatusCode::NOT_FOUND,
    grpc::StatusCode::ALREADY_EXISTS, grpc::StatusCode::FAILED_PRECONDITION, grpc::StatusCode::RESOURCE_EXHAUSTED,
    grpc::StatusCode::DEADLINE_EXCEEDED, grpc::StatusCode::PERMISSION_DENIED, grpc::StatusCode::CANCELLED};

TEST(FuzzTest, RandomAndMalformedSampleAndSubmitJobRequests) {
  Daemon d;
  d.Start(R"({"max_batch_rows": 16, "max_queued_rows": 64, "max_rows_per_request": 8, "max_concurrent_jobs": 1,
              "shutdown_grace_s": 5})");
  constexpr int kThreads = 4;
  constexpr int kPerThread = 600;  // 2,400 calls: half Sample, a quarter SubmitJob, a quarter raw bytes
  std::mutex mu;
  std::map<std::string, int> by_code;
  std::vector<std::string> problems;
  auto worker = [&](int t) {
    Fuzzer fz(1000 + t);
    auto sprites = v1::Sprites::NewStub(d.channel());
    auto training = v1::Training::NewStub(d.channel());
    grpc::GenericStub generic(d.channel());
    for (int i = 0; i < kPerThread; ++i) {
      grpc::ClientContext ctx;
      // Short deadlines bound the test; DEADLINE_EXCEEDED is a proper answer for a costly request.
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
      grpc::Status s;
      std::string what;
      const uint32_t kind = fz.Pick(4);
      // Strings that are not UTF-8 make a proto3 message unparseable: gRPC itself refuses those
      // bytes before any handler runs (UNIMPLEMENTED or INTERNAL), which is a proper answer too.
      bool parseable = true;
      if (kind <= 1) {
        what = "Sample";
        const v1::SampleRequest req = fz.Sample();
        v1::SampleRequest back;
        parseable = back.ParseFromString(req.SerializeAsString());
        auto reader = sprites->Sample(&ctx, req);
        v1::SampleEvent ev;
        while (reader->Read(&ev)) {
        }
        s = reader->Finish();
      } else if (kind == 2) {
        what = "SubmitJob";
        const v1::JobSpec spec = fz.Job();
        v1::JobSpec back;
        parseable = back.ParseFromString(spec.SerializeAsString());
        v1::Job job;
        s = training->SubmitJob(&ctx, spec, &job);
      } else {
        // Malformed bytes on the wire: the server must answer, not crash or hang.
        const bool sample = fz.Pick(2) == 0;
        what = sample ? "raw Sample" : "raw SubmitJob";
        const std::string bytes = fz.Garbage(sample ? fz.Sample().SerializeAsString() : fz.Job().SerializeAsString());
        grpc::Slice slice(bytes);
        grpc::ByteBuffer request(&slice, 1), response;
        std::promise<grpc::Status> done;
        generic.UnaryCall(&ctx, sample ? "/spritediff.v1.Sprites/Sample" : "/spritediff.v1.Training/SubmitJob",
                          grpc::StubOptions(), &request, &response, [&done](grpc::Status st) { done.set_value(st); });
        s = done.get_future().get();
        parseable = false;  // a unary read of a streaming reply also ends in INTERNAL
      }
      if (!parseable && (s.error_code() == grpc::StatusCode::INTERNAL ||
                         s.error_code() == grpc::StatusCode::UNIMPLEMENTED)) {
        what += " (unparseable)";
        s = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "");
      }
      std::lock_guard<std::mutex> lock(mu);
      by_code[what + " " + std::to_string(s.error_code())]++;
      if (!kProper.count(s.error_code()) || s.error_message().size() > 2000) {
        if (problems.size() < 20) {
          problems.push_back(what + ": code " + std::to_string(s.error_code()) + " message " +
                             s.error_message().substr(0, 300));
        }
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& th : threads) th.join();
  for (const auto& p : problems) ADD_FAILURE() << p;
  std::string summary;
  for (const auto& [k, n] : by_code) summary += k + ": " + std::to_string(n) + "\n";
  std::cout << "fuzz answers by call and code:\n" << summary;
  EXPECT_GT(by_code.size(), 4u) << "the requests were not varied enough: " << summary;

  // Still serving: a normal request succeeds.
  auto stub = v1::Sprites::NewStub(d.channel());
  grpc::ClientContext ctx;
  v1::SampleRequest ok;
  ok.set_steps(2);
  auto reader = stub->Sample(&ctx, ok);
  v1::SampleEvent ev;
  bool result = false;
  while (reader->Read(&ev)) result |= ev.has_result();
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_TRUE(result);
  stub.reset();
  EXPECT_EQ(d.Stop(), 0) << d.Log().substr(0, 5000);
}

}  // namespace
}  // namespace spritediff::e2e
