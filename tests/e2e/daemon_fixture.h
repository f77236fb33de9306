// Starts the real spritediffd binary on port 0 (the kernel picks a free one; the fixture reads
// the bound port from the daemon's "listening on" log line) with a models dir of its own, and
// stops it with SIGTERM (checking that it exits 0). Shared by the end-to-end tests.
#pragma once

#include <nlohmann/json.hpp>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "core/checkpoint.h"
#include "tests/e2e/free_port.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "spritediff/v1/sprites.grpc.pb.h"
#include "spritediff/v1/training.grpc.pb.h"

namespace spritediff::e2e {

namespace fs = std::filesystem;

// data_root/<name>/<class>/*.png: the first `per_class` real sprites of each class (sorted by
// name), and labels.txt: a small copy of the real data set for training tests.
inline void CopyMiniDataset(const fs::path& data_root, const std::string& name, int per_class) {
  const fs::path src(SPRITEDIFF_DATA_DIR);
  const fs::path dst = data_root / name;
  fs::create_directories(dst);
  fs::copy_file(src / "labels.txt", dst / "labels.txt", fs::copy_options::overwrite_existing);
  for (const auto& cls : fs::directory_iterator(src)) {
    if (!cls.is_directory()) continue;
    std::vector<fs::path> files;
    for (const auto& f : fs::directory_iterator(cls.path())) {
      if (f.path().extension() == ".png") files.push_back(f.path());
    }
    std::sort(files.begin(), files.end());
    fs::create_directories(dst / cls.path().filename());
    for (int i = 0; i < per_class && i < static_cast<int>(files.size()); ++i) {
      fs::copy_file(files[i], dst / cls.path().filename() / files[i].filename(), fs::copy_options::overwrite_existing);
    }
  }
}

// A randomly initialised small model: the protocol does not care how good the sprites are.
// channels 4 and height 32 make an RGBA model like sprites32.
inline void WriteTinyModel(const fs::path& dir, const std::string& name, int channels = 3, int height = 16) {
  ModelInfo info;
  info.name = name;
  info.arch.n_feat = 16;
  info.arch.height = height;
  info.arch.in_channels = channels;
  info.labels = {"hero", "non_hero", "food", "spell", "item"};
  torch::manual_seed(1);
  ContextUnet net(info.arch);
  net->eval();
  Status s = SaveModel((dir / name).string(), info, net);
  ASSERT_TRUE(s.ok()) << s.message();
}

class Daemon {
 public:
  // config: extra JSON config fields (max_batch_rows and the like). A second Start after Stop
  // restarts the daemon on the same directory (models, data and job state kept). creds: how
  // channel() and the health probe connect (TLS tests); args: their channel arguments.
  void Start(const std::string& config_json,
             std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials(),
             grpc::ChannelArguments channel_args = grpc::ChannelArguments()) {
    if (root_.empty()) {
      root_ = fs::temp_directory_path() / ("spritediff_e2e_" + std::to_string(::getpid()) + "_" + std::to_string(FreePort()));
      fs::create_directories(root_ / "models");
      fs::create_directories(root_ / "data");
      WriteTinyModel(root_ / "models", "tiny");
      for (const auto& [name, channels, height] : extra_models_) WriteTinyModel(root_ / "models", name, channels, height);
    }
    // Test daemons run side by side and beside a developer's own: no metrics listener on the
    // default port unless the test asks for one.
    nlohmann::json config = nlohmann::json::parse(config_json.empty() ? "{}" : config_json);
    if (!config.contains("metrics_port")) config["metrics_port"] = 0;
    std::ofstream(root_ / "config.json") << config.dump();
    port_ = 0;
    const std::string log = (root_ / "daemon.log").string();
    // The bound port is read from this run's log: the previous run's must be gone before the
    // child starts, or its "listening on" line would name the old port.
    fs::remove(log);
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      const std::string bin = std::string(SPRITEDIFF_BIN_DIR) + "/spritediffd";
      const std::string config = (root_ / "config.json").string();
      const std::string port = "0";
      const std::string models = (root_ / "models").string();
      const std::string data = (root_ / "data").string();
      const std::string state = (root_ / "state").string();
      execl(bin.c_str(), bin.c_str(), "--config", config.c_str(), "--threads", "1", "--device", "cpu", "serve",
            "--port", port.c_str(), "--models-dir", models.c_str(), "--default-model", "tiny", "--data-root",
            data.c_str(), "--state-dir", state.c_str(), nullptr);
      _exit(127);
    }
    // A fresh channel per probe: a channel that failed once waits out its reconnect backoff.
    for (int i = 0; i < 300; ++i) {
      if (port_ == 0) port_ = BoundPort();
      if (port_ == 0) {  // not listening yet
        int status = 0;
        if (waitpid(pid_, &status, WNOHANG) == pid_) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      grpc::ChannelArguments args = channel_args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
      auto probe = grpc::CreateCustomChannel(address(), creds, args);
      auto health = grpc::health::v1::Health::NewStub(probe);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
      grpc::health::v1::HealthCheckResponse resp;
      if (health->Check(&ctx, {}, &resp).ok() && resp.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
        channel_ = grpc::CreateCustomChannel(address(), creds, channel_args);
        return;
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    FAIL() << "daemon did not become healthy; log:\n" << Log();
  }

  // The daemon's process id (-1 when not running), for tests that signal it.
  pid_t pid() const { return pid_; }

  // SIGKILL: no drain, no state saved beyond the last checkpoint.
  void Kill() {
    if (pid_ <= 0) return;
    channel_.reset();
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  // SIGTERM, then the exit status (0 expected).
  int Stop() {
    if (pid_ <= 0) return -1;
    channel_.reset();  // an idle client connection would hold up the drain
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  ~Daemon() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (!root_.empty()) fs::remove_all(root_);
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  // The port from this run's "spritediffd listening on 127.0.0.1:PORT" log line; 0 before it.
  int BoundPort() const {
    const std::string log = Log();
    const std::string marker = "listening on 127.0.0.1:";
    const size_t at = log.find(marker);
    if (at == std::string::npos) return 0;
    return std::atoi(log.c_str() + at + marker.size());
  }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  const fs::path& root() const { return root_; }
  // Before the first Start: another tiny model in the models dir (an RGBA one, say).
  void AddTinyModel(const std::string& name, int channels, int height) { extra_models_.push_back({name, channels, height}); }
  // Waits up to timeout for text to appear in this run's log (what a signal's handling writes):
  // synchronisation on what the daemon did, not on a guess of how long it takes.
  bool WaitForLog(const std::string& text, std::chrono::seconds timeout = std::chrono::seconds(20)) const {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (Log().find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  std::string Log() const {
    std::ifstream in(root_ / "daemon.log");  // the current run's log
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  fs::path root_;
  std::vector<std::tuple<std::string, int, int>> extra_models_;
  int port_ = 0;
  pid_t pid_ = -1;
  std::shared_ptr<grpc::Channel> channel_;
};

// What a program printed and its exit code.
struct Output {
  int exit_code = -1;
  std::string text;  // stdout and stderr together
};

// Runs a shell command line (its own cwd and environment changes included), collecting its
// stdout and stderr.
inline Output RunShell(const std::string& command) {
  const std::string cmd = command + " 2>&1";
  Output out;
  FILE* pipe = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n = 0;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.text.append(buf.data(), n);
  const int status = pclose(pipe);
  out.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// Runs build/bin/<program> with args, collecting its output.
inline Output RunBin(const std::string& program, const std::string& args) {
  return RunShell(std::string(SPRITEDIFF_BIN_DIR) + "/" + program + " " + args);
}

inline Output RunCtl(const std::string& args) { return RunBin("spritectl", args); }

}  // namespace spritediff::e2e
