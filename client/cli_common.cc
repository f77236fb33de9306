#include "client/cli_common.h"

#include "common/cli_fail.h"

#include <grpcpp/support/client_interceptor.h>

#include <cctype>
#include <chrono>
#include <fstream>
#include <sstream>
#include <cmath>
#include <iostream>

namespace spritectl {

[[noreturn]] void Fail(const std::string& message) { spritediff::FailCli("spritectl", message); }

[[noreturn]] void FailRpc(const grpc::Status& s, const Connection& c) {
  Fail(std::string(CodeName(s.error_code())) + ": " + s.error_message() +
       (s.error_code() == grpc::StatusCode::UNAVAILABLE ? " (server " + c.server + ")" : ""));
}

namespace {

// A token or PEM file; a pipe is fine (--token-file <(pass show ...)), but never more than 1 MiB
// is held, whatever the path turns out to be (/dev/zero).
std::string ReadFileOrFail(const std::string& flag, const std::string& path) {
  constexpr size_t kMaxBytes = 1 << 20;
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(flag + " " + path + ": cannot read");
  std::string text(kMaxBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) Fail(flag + " " + path + ": cannot read");
  if (static_cast<size_t>(in.gcount()) > kMaxBytes) Fail(flag + " " + path + ": more than 1 MiB; not a token or PEM file");
  text.resize(static_cast<size_t>(in.gcount()));
  return text;
}

// Adds `authorization: Bearer <token>` to every call made on the channel.
class BearerInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit BearerInterceptor(std::string header) : header_(std::move(header)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", header_});
    }
    methods->Proceed();
  }

 private:
  std::string header_;
};

class BearerInterceptorFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerInterceptorFactory(std::string header) : header_(std::move(header)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new BearerInterceptor(header_);
  }

 private:
  std::string header_;
};

}  // namespace

std::shared_ptr<grpc::Channel> MakeChannel(const Connection& c, const grpc::ChannelArguments& args) {
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (c.tls_cert.empty() != c.tls_key.empty()) Fail("--tls-cert and --tls-key go together");
  if (c.tls || !c.tls_ca.empty() || !c.tls_cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!c.tls_ca.empty()) ssl.pem_root_certs = ReadFileOrFail("--tls-ca", c.tls_ca);
    if (!c.tls_cert.empty()) {
      ssl.pem_cert_chain = ReadFileOrFail("--tls-cert", c.tls_cert);
      ssl.pem_private_key = ReadFileOrFail("--tls-key", c.tls_key);
    }
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments with_name = args;
  if (!c.tls_server_name.empty()) with_name.SetSslTargetNameOverride(c.tls_server_name);
  if (c.token_file.empty()) return grpc::CreateCustomChannel(c.server, creds, with_name);
  std::string token = ReadFileOrFail("--token-file", c.token_file);
  token = token.substr(0, token.find('\n'));
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  if (token.empty()) Fail("--token-file " + c.token_file + ": the first line holds no token");
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<BearerInterceptorFactory>("Bearer " + token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(c.server, creds, with_name, std::move(interceptors));
}

std::shared_ptr<grpc::Channel> Connect(const Connection& c) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = MakeChannel(c, args);
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
  cmd->add_option("--token-file", c.token_file, "file whose first line is the bearer token")
      ->envname("SPRITEDIFF_TOKEN_FILE");
  cmd->add_flag("--tls", c.tls, "connect with TLS (system roots unless --tls-ca)");
  cmd->add_option("--tls-ca", c.tls_ca, "PEM CA certificate that signed the server's certificate (implies --tls)");
  cmd->add_option("--tls-cert", c.tls_cert, "PEM client certificate for mutual TLS (with --tls-key)");
  cmd->add_option("--tls-key", c.tls_key, "PEM private key of --tls-cert");
  cmd->add_option("--tls-server-name", c.tls_server_name,
                  "name the server's certificate must carry when it differs from the --server host");
}

}  // namespace spritectl
