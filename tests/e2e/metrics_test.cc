// End-to-end: the Prometheus endpoint reflects requests and jobs the daemon handled.
#include <httplib.h>

#include "tests/e2e/daemon_fixture.h"

namespace spritediff::e2e {
namespace {

TEST(MetricsTest, ScrapeShowsRequestsByStatusAndSchedulerCounters) {
  const int metrics_port = FreePort();
  Daemon d;
  d.Start(R"({"metrics_port": )" + std::to_string(metrics_port) + "}");
  auto stub = v1::Sprites::NewStub(d.channel());
  for (int steps : {3, 9999}) {  // one good request, one INVALID_ARGUMENT
    grpc::ClientContext ctx;
    v1::SampleRequest req;
    req.set_count(2);
    req.set_steps(static_cast<uint32_t>(steps));
    auto reader = stub->Sample(&ctx, req);
    v1::SampleEvent ev;
    while (reader->Read(&ev)) {
    }
    EXPECT_EQ(reader->Finish().ok(), steps == 3);
  }
  httplib::Client http("127.0.0.1", metrics_port);
  auto res = http.Get("/metrics");
  ASSERT_TRUE(res) << "no answer from the metrics port";
  EXPECT_EQ(res->status, 200);
  const std::string& text = res->body;
  EXPECT_NE(text.find("spritediff_sample_requests_total{model=\"tiny\",code=\"OK\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("spritediff_sample_requests_total{model=\"tiny\",code=\"INVALID_ARGUMENT\"} 1"), std::string::npos)
      << text;
  EXPECT_NE(text.find("spritediff_sample_run_seconds_count{model=\"tiny\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("spritediff_scheduler_steps_total{model=\"tiny\"} 3"), std::string::npos) << text;
  EXPECT_NE(text.find("spritediff_scheduler_rows_stepped_total{model=\"tiny\"} 6"), std::string::npos) << text;
  EXPECT_NE(text.find("spritediff_scheduler_frames_skipped_total{model=\"tiny\"} 0"), std::string::npos) << text;
  EXPECT_NE(text.find("spritediff_scheduler_overloaded{model=\"tiny\"} 0"), std::string::npos) << text;
  EXPECT_NE(text.find("spritediff_scheduler_step_seconds{model=\"tiny\"} "), std::string::npos) << text;
  EXPECT_EQ(text.find("spritediff_scheduler_step_seconds{model=\"tiny\"} 0\n"), std::string::npos) << text;  // steps ran
  EXPECT_NE(text.find("spritediff_training_jobs{state=\"RUNNING\"} 0"), std::string::npos) << text;
  stub.reset();
  EXPECT_EQ(d.Stop(), 0) << d.Log();
}

TEST(MetricsTest, PortInUseIsAClearStartupError) {
  const int blocker = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(blocker, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(blocker, 1), 0);
  socklen_t len = sizeof(addr);
  getsockname(blocker, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  const std::string bin = std::string(SPRITEDIFF_BIN_DIR) + "/spritediffd";
  const fs::path dir = fs::temp_directory_path() / ("spritediff_metrics_" + std::to_string(::getpid()));
  fs::create_directories(dir / "models");
  WriteTinyModel(dir / "models", "tiny");
  const std::string cmd = bin + " --threads 1 serve --port 0 --models-dir " + (dir / "models").string() +
                          " --default-model tiny --state-dir " + (dir / "state").string() + " --metrics-port " +
                          std::to_string(port) + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  std::string text;
  std::array<char, 4096> buf;
  size_t n = 0;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) text.append(buf.data(), n);
  const int status = pclose(pipe);
  EXPECT_NE(WEXITSTATUS(status), 0);
  EXPECT_NE(text.find("metrics: cannot listen on 127.0.0.1:" + std::to_string(port)), std::string::npos) << text;
  close(blocker);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace spritediff::e2e
