#include "server/listen_security.h"

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "common/file_util.h"

namespace spritediff {

namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxPemBytes = 1 << 20;  // a certificate chain or key is a few KB

Result<std::string> ReadPem(const char* field, const std::string& path) {
  Result<std::string> bytes = ReadFileBounded(path, kMaxPemBytes, "a PEM file");
  if (!bytes.ok()) return bytes.status().Prefixed(std::string(field) + " ");
  if (bytes->find("-----BEGIN") == std::string::npos) {
    return Status::InvalidArgument(std::string(field) + " " + path + ": not a PEM file");
  }
  return bytes;
}

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;

BioPtr MemoryBio(const std::string& bytes) { return BioPtr(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size()))); }

std::unique_ptr<X509, X509Free> FirstCertificate(const std::string& pem) {
  BioPtr bio = MemoryBio(pem);
  return std::unique_ptr<X509, X509Free>(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
}

// The key parses, the first certificate of the chain parses and holds the key's public half,
// and the client CA (when configured) holds a certificate.
Status CheckConsistent(const AppConfig& config, const std::string& key_pem, const std::string& cert_pem,
                       const std::string& ca_pem) {
  BioPtr key_bio = MemoryBio(key_pem);
  std::unique_ptr<EVP_PKEY, KeyFree> key(
      key_bio ? PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr) : nullptr);
  std::unique_ptr<X509, X509Free> cert = FirstCertificate(cert_pem);
  Status s = Status::Ok();
  if (!key) {
    s = Status::InvalidArgument("tls_key_file " + config.tls_key_file + ": not an unencrypted PEM private key");
  } else if (!cert) {
    s = Status::InvalidArgument("tls_cert_file " + config.tls_cert_file + ": not a PEM certificate");
  } else if (X509_check_private_key(cert.get(), key.get()) != 1) {
    s = Status::InvalidArgument("tls_key_file " + config.tls_key_file + " does not belong to the certificate in " +
                                "tls_cert_file " + config.tls_cert_file);
  } else if (!config.tls_client_ca_file.empty() && !FirstCertificate(ca_pem)) {
    s = Status::InvalidArgument("tls_client_ca_file " + config.tls_client_ca_file + ": not a PEM certificate");
  }
  ERR_clear_error();  // OpenSSL's error queue is per thread; leave it empty
  return s;
}

Status WritePrivate(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
  out.close();
  if (!out) return Status::Internal("writing " + path.string());
  std::error_code ec;
  fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write, ec);
  return Status::Ok();
}

}  // namespace

Result<TlsFiles::Contents> TlsFiles::ReadChecked() const {
  Contents c;
  Result<std::string> key = ReadPem("tls_key_file", config_.tls_key_file);
  if (!key.ok()) return key.status();
  Result<std::string> cert = ReadPem("tls_cert_file", config_.tls_cert_file);
  if (!cert.ok()) return cert.status();
  c.key = std::move(*key);
  c.cert = std::move(*cert);
  if (!config_.tls_client_ca_file.empty()) {
    Result<std::string> ca = ReadPem("tls_client_ca_file", config_.tls_client_ca_file);
    if (!ca.ok()) return ca.status();
    c.ca = std::move(*ca);
  }
  Status consistent = CheckConsistent(config_, c.key, c.cert, c.ca);
  if (!consistent.ok()) return consistent;
  return c;
}

Status TlsFiles::Publish(const Contents& c) {
  const fs::path dir(dir_);
  const fs::path gen = dir / ("gen-" + std::to_string(generation_ + 1));
  std::error_code ec;
  fs::create_directory(gen, ec);
  if (ec) return Status::Internal("creating " + gen.string() + ": " + ec.message());
  Status written = WritePrivate(gen / "key.pem", c.key);
  if (written.ok()) written = WritePrivate(gen / "cert.pem", c.cert);
  if (written.ok() && !config_.tls_client_ca_file.empty()) written = WritePrivate(gen / "ca.pem", c.ca);
  if (!written.ok()) return written;
  // The watcher opens current/<file>: one rename moves all of them at once. A read that spans
  // the swap sees the files' modification times change and reads again.
  const fs::path link_tmp = dir / "current.new";
  fs::remove(link_tmp, ec);
  fs::create_directory_symlink(gen.filename(), link_tmp, ec);
  if (!ec) fs::rename(link_tmp, dir / "current", ec);
  if (ec) return Status::Internal("switching " + (dir / "current").string() + ": " + ec.message());
  ++generation_;
  staged_ = c;
  // The generation before the previous one can no longer be mid-read.
  if (generation_ > 2) fs::remove_all(dir / ("gen-" + std::to_string(generation_ - 2)), ec);
  return Status::Ok();
}

Result<std::unique_ptr<TlsFiles>> TlsFiles::Stage(const AppConfig& config) {
  std::error_code ec;
  std::string tmpl = (fs::temp_directory_path(ec) / "spritediff-tls.XXXXXX").string();
  if (ec || ::mkdtemp(tmpl.data()) == nullptr) {  // mkdtemp makes it 0700
    return Status::Internal("cannot create a private directory for the TLS files under " +
                            fs::temp_directory_path(ec).string());
  }
  std::unique_ptr<TlsFiles> files(new TlsFiles(config, tmpl));
  Result<Contents> contents = files->ReadChecked();
  if (!contents.ok()) return contents.status();
  Status published = files->Publish(*contents);
  if (!published.ok()) return published;
  const fs::path current = fs::path(tmpl) / "current";
  // Checked every second; reading three small files is nothing next to a handshake.
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      (current / "key.pem").string(), (current / "cert.pem").string(),
      config.tls_client_ca_file.empty() ? std::string() : (current / "ca.pem").string(), 1u);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (config.tls_client_ca_file.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  files->credentials_ = grpc::experimental::TlsServerCredentials(options);
  if (!files->credentials_) return Status::InvalidArgument("cannot build TLS credentials from the configured files");
  return Result<std::unique_ptr<TlsFiles>>(std::move(files));
}

TlsFiles::~TlsFiles() {
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

Result<bool> TlsFiles::Reload() {
  Result<Contents> contents = ReadChecked();
  if (!contents.ok()) return contents.status();
  if (*contents == staged_) return false;
  Status published = Publish(*contents);
  if (!published.ok()) return published;
  return true;
}

Result<ServerCredentials> MakeServerCredentials(const AppConfig& config) {
  ServerCredentials out;
  if (config.tls_cert_file.empty()) {
    out.credentials = grpc::InsecureServerCredentials();
    return Result<ServerCredentials>(std::move(out));
  }
  Result<std::unique_ptr<TlsFiles>> files = TlsFiles::Stage(config);
  if (!files.ok()) return files.status();
  out.files = std::move(*files);
  out.credentials = out.files->credentials();
  return Result<ServerCredentials>(std::move(out));
}

void ApplyConnectionPolicy(const AppConfig& config, grpc::ServerBuilder& builder) {
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, config.max_concurrent_streams);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, config.keepalive_time_s * 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, config.keepalive_timeout_s * 1000);
  // Clients may ping no more often than every 10 s; more is treated as abuse (GOAWAY).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  if (config.max_connection_idle_s > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, config.max_connection_idle_s * 1000);
  }
}

}  // namespace spritediff
