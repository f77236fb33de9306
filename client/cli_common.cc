#include "client/cli_common.h"

#include "common/cli_fail.h"

#include <chrono>
#include <cmath>
#include <iostream>

namespace spritectl {

[[noreturn]] void Fail(const std::string& message) { spritediff::FailCli("spritectl", message); }

[[noreturn]] void FailRpc(const grpc::Status& s, const Connection& c) {
  Fail(std::string(CodeName(s.error_code())) + ": " + s.error_message() +
       (s.error_code() == grpc::StatusCode::UNAVAILABLE ? " (server " + c.server + ")" : ""));
}

std::shared_ptr<grpc::Channel> Connect(const Connection& c) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(c.server, grpc::InsecureChannelCredentials(), args);
  const auto deadline = std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(std::min(c.connect_timeout_s, c.timeout_s) * 1000));
  if (!channel->WaitForConnected(deadline)) {
    Fail("cannot reach spritediffd at " + c.server + " within " +
         std::to_string(static_cast<int>(std::ceil(std::min(c.connect_timeout_s, c.timeout_s)))) +
         "s (is it running? start it with `make serve`)");
  }
  return channel;
}

void SetDeadline(grpc::ClientContext& ctx, double seconds) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
}

void AddConnectionOptions(CLI::App* cmd, Connection& c) {
  cmd->add_option("--server", c.server, "daemon address host:port")->capture_default_str();
  cmd->add_option("--timeout", c.timeout_s, "seconds before a call is abandoned")->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  cmd->add_option("--connect-timeout", c.connect_timeout_s, "seconds to wait for the server to answer")
      ->check(CLI::Range(0.1, 3600.0))->capture_default_str();
}

}  // namespace spritectl
