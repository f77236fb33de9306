// End-to-end: who may call what (bearer tokens with roles), TLS and mutual TLS, and the
// refusal to listen publicly without them. Tokens are hashed here with OpenSSL, independently
// of the daemon's code; certificates come from a throwaway CA made with the openssl CLI.
#include <openssl/sha.h>

#include <cstdlib>
#include <functional>
#include <map>

#include "tests/e2e/daemon_fixture.h"

namespace spritediff::e2e {
namespace {

std::string Sha256Hex(const std::string& s) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(s.data()), s.size(), d);
  char hex[2 * SHA256_DIGEST_LENGTH + 1];
  for (int i = 0; i < SHA256_DIGEST_LENGTH; ++i) std::snprintf(hex + 2 * i, 3, "%02x", d[i]);
  return hex;
}

class Scratch {
 public:
  Scratch() : dir_(fs::temp_directory_path() / ("spritediff_auth_" + std::to_string(::getpid()) + "_" + std::to_string(FreePort()))) {
    fs::create_directories(dir_);
  }
  ~Scratch() { fs::remove_all(dir_); }
  fs::path Write(const std::string& name, const std::string& text) const {
    std::ofstream(dir_ / name) << text;
    return dir_ / name;
  }
  const fs::path& dir() const { return dir_; }

 private:
  fs::path dir_;
};

const std::map<std::string, std::string> kTokens = {
    {"sample", "tok-sample-3f9a1c"}, {"train", "tok-train-77b2e0"}, {"admin", "tok-admin-c01d5e"}};

std::string TokenFileText() {
  std::string text = "# role sha256(token) name\n";
  for (const auto& [role, token] : kTokens) text += role + " " + Sha256Hex(token) + " test-" + role + "\n";
  return text;
}

// Every RPC of both services, each made with the given metadata; returns its status.
using Call = std::function<grpc::Status(const std::shared_ptr<grpc::Channel>&, grpc::ClientContext&)>;
std::map<std::string, Call> AllRpcs() {
  std::map<std::string, Call> calls;
  calls["Sprites.Sample"] = [](auto ch, grpc::ClientContext& ctx) {
    v1::SampleRequest req;
    req.set_steps(2);
    auto reader = v1::Sprites::NewStub(ch)->Sample(&ctx, req);
    v1::SampleEvent ev;
    while (reader->Read(&ev)) {
    }
    return reader->Finish();
  };
  calls["Sprites.ListModels"] = [](auto ch, grpc::ClientContext& ctx) {
    v1::ListModelsResponse r;
    return v1::Sprites::NewStub(ch)->ListModels(&ctx, {}, &r);
  };
  calls["Sprites.GetModel"] = [](auto ch, grpc::ClientContext& ctx) {
    v1::GetModelRequest req;
    req.set_name("tiny");
    v1::ModelInfo r;
    return v1::Sprites::NewStub(ch)->GetModel(&ctx, req, &r);
  };
  calls["Training.SubmitJob"] = [](auto ch, grpc::ClientContext& ctx) {
    v1::JobSpec spec;  // no model_name: INVALID_ARGUMENT once past authentication
    v1::Job job;
    return v1::Training::NewStub(ch)->SubmitJob(&ctx, spec, &job);
  };
  calls["Training.WatchJob"] = [](auto ch, grpc::ClientContext& ctx) {
    v1::JobRef ref;
    ref.set_id("job-none");
    auto reader = v1::Training::NewStub(ch)->WatchJob(&ctx, ref);
    v1::JobEvent ev;
    while (reader->Read(&ev)) {
    }
    return reader->Finish();
  };
  calls["Training.GetJob"] = [](auto ch, grpc::ClientContext& ctx) {
    v1::JobRef ref;
    ref.set_id("job-none");
    v1::Job job;
    return v1::Training::NewStub(ch)->GetJob(&ctx, ref, &job);
  };
  calls["Training.ListJobs"] = [](auto ch, grpc::ClientContext& ctx) {
    v1::ListJobsResponse r;
    return v1::Training::NewStub(ch)->ListJobs(&ctx, {}, &r);
  };
  calls["Training.CancelJob"] = [](auto ch, grpc::ClientContext& ctx) {
    v1::JobRef ref;
    ref.set_id("job-none");
    v1::Job job;
    return v1::Training::NewStub(ch)->CancelJob(&ctx, ref, &job);
  };
  return calls;
}

// What each RPC answers once authorised (derived from the request each sends).
grpc::StatusCode AuthorisedCode(const std::string& rpc) {
  if (rpc == "Training.SubmitJob") return grpc::StatusCode::INVALID_ARGUMENT;
  if (rpc == "Training.WatchJob" || rpc == "Training.GetJob" || rpc == "Training.CancelJob") {
    return grpc::StatusCode::NOT_FOUND;
  }
  return grpc::StatusCode::OK;
}

TEST(AuthTest, EveryRoleAgainstEveryRpc) {
  Scratch scratch;
  const fs::path tokens = scratch.Write("tokens", TokenFileText());
  Daemon d;
  d.Start(R"({"auth_token_file": ")" + tokens.string() + R"(", "max_concurrent_jobs": 1})");
  // presented "authorization" value (empty: none) -> role it stands for ("" = not a valid token)
  const std::vector<std::pair<std::string, std::string>> callers = {
      {"", ""},
      {"Bearer wrong-token", ""},
      {"Bearer ", ""},
      {"Basic " + kTokens.at("admin"), ""},
      {"Bearer " + kTokens.at("sample") + "x", ""},
      {"Bearer " + kTokens.at("sample"), "sample"},
      {"Bearer " + kTokens.at("train"), "train"},
      {"Bearer " + kTokens.at("admin"), "admin"},
      {"bearer " + kTokens.at("admin"), "admin"},  // the scheme is case-insensitive
  };
  for (const auto& [rpc, call] : AllRpcs()) {
    const bool training = rpc.rfind("Training.", 0) == 0;
    for (const auto& [header, role] : callers) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      if (!header.empty()) ctx.AddMetadata("authorization", header);
      const grpc::Status s = call(d.channel(), ctx);
      SCOPED_TRACE(rpc + " with '" + header + "'");
      if (role.empty()) {
        EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
        EXPECT_EQ(s.error_message(), "missing or invalid credentials") << "no detail leaks";
      } else if (training && role == "sample") {
        EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
        EXPECT_EQ(s.error_message(), "these credentials may not call this method");
      } else {
        EXPECT_EQ(s.error_code(), AuthorisedCode(rpc)) << s.error_message();
      }
    }
  }
  // Probes need no token.
  auto health = grpc::health::v1::Health::NewStub(d.channel());
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckResponse resp;
  EXPECT_TRUE(health->Check(&ctx, {}, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  // spritectl: --token-file, the environment variable, and neither.
  const fs::path sample_token = scratch.Write("sample.token", kTokens.at("sample") + "\n");
  Output with_flag = RunCtl("models --server " + d.address() + " --token-file " + sample_token.string());
  EXPECT_EQ(with_flag.exit_code, 0) << with_flag.text;
  EXPECT_NE(with_flag.text.find("tiny"), std::string::npos) << with_flag.text;
  Output without = RunCtl("models --server " + d.address());
  EXPECT_NE(without.exit_code, 0) << without.text;
  EXPECT_NE(without.text.find("UNAUTHENTICATED"), std::string::npos) << without.text;
  const std::string cmd = "SPRITEDIFF_TOKEN_FILE=" + sample_token.string() + " " + std::string(SPRITEDIFF_BIN_DIR) +
                          "/spritectl models --server " + d.address() + " >/dev/null 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
  Output endless = RunCtl("models --server " + d.address() + " --token-file /dev/zero");  // bounded, not read forever
  EXPECT_NE(endless.exit_code, 0) << endless.text;
  EXPECT_NE(endless.text.find("more than 1 MiB"), std::string::npos) << endless.text;
  EXPECT_EQ(d.Stop(), 0) << d.Log();
  EXPECT_EQ(d.Log().find(kTokens.at("admin")), std::string::npos) << "a token reached the log";
}

// The pid of the spritediffd serving on port (from /proc; the fixture keeps its own private).
TEST(AuthTest, SighupReReadsTheTokenFile) {
  Scratch scratch;
  const fs::path tokens = scratch.Write("tokens", TokenFileText());
  Daemon d;
  d.Start(R"({"auth_token_file": ")" + tokens.string() + R"("})");
  auto list_with = [&](const std::string& role) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + kTokens.at(role));
    v1::ListModelsResponse r;
    return v1::Sprites::NewStub(d.channel())->ListModels(&ctx, {}, &r).error_code();
  };
  ASSERT_EQ(list_with("sample"), grpc::StatusCode::OK);
  const pid_t pid = d.pid();
  ASSERT_GT(pid, 0);
  // Revoke the sample token: only admin's line stays.
  scratch.Write("tokens", "admin " + Sha256Hex(kTokens.at("admin")) + "\n");
  ASSERT_EQ(kill(pid, SIGHUP), 0);
  bool revoked = false;
  for (int i = 0; i < 100 && !revoked; ++i) {
    revoked = list_with("sample") == grpc::StatusCode::UNAUTHENTICATED;
    if (!revoked) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(revoked) << d.Log();
  EXPECT_EQ(list_with("admin"), grpc::StatusCode::OK);
  // A broken file on SIGHUP keeps the tokens in use.
  scratch.Write("tokens", "nonsense\n");
  ASSERT_EQ(kill(pid, SIGHUP), 0);
  EXPECT_TRUE(d.WaitForLog("SIGHUP: keeping the previous tokens")) << d.Log();
  EXPECT_EQ(list_with("admin"), grpc::StatusCode::OK);
  EXPECT_EQ(d.Stop(), 0) << d.Log();
  EXPECT_NE(d.Log().find("SIGHUP: keeping the previous tokens"), std::string::npos) << d.Log();
}

TEST(AuthTest, BadTokenFileIsAClearStartupError) {
  Scratch scratch;
  const fs::path bad = scratch.Write("tokens", "superuser " + Sha256Hex("x") + "\n");
  const fs::path config = scratch.Write("config.json", R"({"auth_token_file": ")" + bad.string() + R"("})");
  Output out = RunBin("spritediffd", "--config " + config.string() + " serve --port " + std::to_string(FreePort()) +
                                         " --models-dir " + scratch.dir().string());
  EXPECT_EQ(out.exit_code, 1) << out.text;
  EXPECT_NE(out.text.find("role must be sample, train or admin"), std::string::npos) << out.text;
}

TEST(AuthTest, PublicAddressNeedsTlsAndTokensOrAnExplicitOptOut) {
  Scratch scratch;
  const fs::path config = scratch.Write("config.json", "{}");
  Output out = RunBin("spritediffd", "--config " + config.string() + " serve --bind 0.0.0.0 --port " +
                                         std::to_string(FreePort()) + " --models-dir " + scratch.dir().string());
  EXPECT_EQ(out.exit_code, 1) << out.text;
  EXPECT_NE(out.text.find("refusing to listen on non-loopback address 0.0.0.0 without TLS"), std::string::npos)
      << out.text;
  EXPECT_NE(out.text.find("allow_insecure_public"), std::string::npos) << out.text;
  size_t lines = 0;
  for (char c : out.text) lines += c == '\n';
  EXPECT_EQ(lines, 1u) << out.text;
}

// A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate.
class Pki {
 public:
  explicit Pki(const fs::path& dir) : dir_(dir) {
    const std::string d = dir.string();
    std::ofstream(dir / "server.ext") << "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
    const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    const std::string script =
        "(cd " + d + " && openssl req -x509 " + key + " -keyout ca.key -out ca.pem -days 3650 -subj /CN=test-ca" +
        " && openssl req " + key + " -keyout server.key -out server.csr -subj /CN=localhost" +
        " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 3650"
        " -extfile server.ext" +
        " && openssl req " + key + " -keyout client.key -out client.csr -subj /CN=test-client" +
        " && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 3650" +
        " && openssl req -x509 " + key + " -keyout other-ca.key -out other-ca.pem -days 3650 -subj /CN=other-ca" +
        ") >/dev/null 2>&1";
    ok_ = std::system(script.c_str()) == 0;
  }
  bool ok() const { return ok_; }
  std::string Read(const std::string& name) const {
    std::ifstream in(dir_ / name);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

 private:
  fs::path dir_;
  bool ok_ = false;
};

grpc::StatusCode ListModelsWith(const std::string& address, std::shared_ptr<grpc::ChannelCredentials> creds) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto stub = v1::Sprites::NewStub(grpc::CreateCustomChannel(address, creds, args));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ListModelsResponse r;
  return stub->ListModels(&ctx, {}, &r).error_code();
}

std::shared_ptr<grpc::ChannelCredentials> Tls(const Pki& pki, const std::string& ca, bool client_cert) {
  grpc::SslCredentialsOptions o;
  if (!ca.empty()) o.pem_root_certs = pki.Read(ca);
  if (client_cert) {
    o.pem_cert_chain = pki.Read("client.pem");
    o.pem_private_key = pki.Read("client.key");
  }
  return grpc::SslCredentials(o);
}

TEST(AuthTest, TlsAndMutualTls) {
  Scratch scratch;
  Pki pki(scratch.dir());
  ASSERT_TRUE(pki.ok()) << "openssl could not make the test certificates";
  {
    Daemon d;
    d.Start(R"({"tls_cert_file": ")" + pki.Path("server.pem") + R"(", "tls_key_file": ")" + pki.Path("server.key") +
                R"("})",
            Tls(pki, "ca.pem", false));
    EXPECT_EQ(ListModelsWith(d.address(), Tls(pki, "ca.pem", false)), grpc::StatusCode::OK);
    EXPECT_EQ(ListModelsWith(d.address(), grpc::InsecureChannelCredentials()), grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(ListModelsWith(d.address(), Tls(pki, "other-ca.pem", false)), grpc::StatusCode::UNAVAILABLE)
        << "a server certificate from the wrong CA must be refused";
    Output ctl = RunCtl("models --server " + d.address() + " --tls-ca " + pki.Path("ca.pem"));
    EXPECT_EQ(ctl.exit_code, 0) << ctl.text;
    Output plain = RunCtl("models --connect-timeout 2 --server " + d.address());
    EXPECT_NE(plain.exit_code, 0) << plain.text;
    EXPECT_EQ(d.Stop(), 0) << d.Log();
  }
  {
    Daemon d;
    d.Start(R"({"tls_cert_file": ")" + pki.Path("server.pem") + R"(", "tls_key_file": ")" + pki.Path("server.key") +
                R"(", "tls_client_ca_file": ")" + pki.Path("ca.pem") + R"("})",
            Tls(pki, "ca.pem", true));
    EXPECT_EQ(ListModelsWith(d.address(), Tls(pki, "ca.pem", true)), grpc::StatusCode::OK);
    EXPECT_EQ(ListModelsWith(d.address(), Tls(pki, "ca.pem", false)), grpc::StatusCode::UNAVAILABLE)
        << "mutual TLS: a client without a certificate is refused";
    Output ctl = RunCtl("models --server " + d.address() + " --tls-ca " + pki.Path("ca.pem") + " --tls-cert " +
                        pki.Path("client.pem") + " --tls-key " + pki.Path("client.key"));
    EXPECT_EQ(ctl.exit_code, 0) << ctl.text;
    EXPECT_EQ(d.Stop(), 0) << d.Log();
  }
}

// Issue 13: certificates reload on SIGHUP (and when the files change, polled every
// tls_reload_s, here an hour so that only the signal can have done it). A renewal whose key
// does not match its certificate is refused and the certificate in use stays.
TEST(AuthTest, SighupReloadsTheTlsCertificate) {
  Scratch scratch;
  fs::create_directories(scratch.dir() / "a");
  fs::create_directories(scratch.dir() / "b");
  fs::create_directories(scratch.dir() / "live");
  Pki a(scratch.dir() / "a"), b(scratch.dir() / "b");
  ASSERT_TRUE(a.ok() && b.ok()) << "openssl could not make the test certificates";
  const fs::path live = scratch.dir() / "live";
  auto install = [&](const Pki& cert_from, const Pki& key_from) {
    std::ofstream(live / "server.pem") << cert_from.Read("server.pem");
    std::ofstream(live / "server.key") << key_from.Read("server.key");
  };
  install(a, a);
  Daemon d;
  d.Start(R"({"tls_reload_s": 3600, "tls_cert_file": ")" + (live / "server.pem").string() + R"(", "tls_key_file": ")" +
              (live / "server.key").string() + R"("})",
          Tls(a, "ca.pem", false));
  EXPECT_EQ(ListModelsWith(d.address(), Tls(a, "ca.pem", false)), grpc::StatusCode::OK);
  EXPECT_EQ(ListModelsWith(d.address(), Tls(b, "ca.pem", false)), grpc::StatusCode::UNAVAILABLE);
  const pid_t pid = d.pid();
  ASSERT_GT(pid, 0);
  auto served_by = [&](const Pki& ca) {  // new handshakes see the staged files within about a second
    for (int i = 0; i < 100; ++i) {
      if (ListModelsWith(d.address(), Tls(ca, "ca.pem", false)) == grpc::StatusCode::OK) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  };

  // Half a renewal (b's certificate, a's key) is refused, and a's certificate stays in use.
  install(b, a);
  ASSERT_EQ(kill(pid, SIGHUP), 0);
  EXPECT_TRUE(d.WaitForLog("SIGHUP: keeping the TLS certificate in use: tls_key_file")) << d.Log();
  EXPECT_EQ(ListModelsWith(d.address(), Tls(a, "ca.pem", false)), grpc::StatusCode::OK);

  // The whole renewal, then SIGHUP: b's certificate is served, a's is not.
  install(b, b);
  ASSERT_EQ(kill(pid, SIGHUP), 0);
  EXPECT_TRUE(served_by(b)) << d.Log();
  EXPECT_EQ(ListModelsWith(d.address(), Tls(a, "ca.pem", false)), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(d.Stop(), 0) << d.Log();
  EXPECT_NE(d.Log().find("SIGHUP: TLS certificate reloaded"), std::string::npos) << d.Log();
}

}  // namespace
}  // namespace spritediff::e2e
