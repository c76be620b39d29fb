// bucketfs-server: the Hub bucket API and the Xet CAS API over local disk.
//
//   bucketfs-server --data DIR --listen 127.0.0.1:PORT [--tokens FILE] [--ready-file F]

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <pthread.h>

#include "bucket_server.h"
#include "http_server.h"

namespace {

struct ListenAddress {
  std::string host;
  std::uint16_t port = 0;
};

std::optional<ListenAddress> parse_listen(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) return std::nullopt;
  ListenAddress address;
  address.host = text.substr(0, colon);
  try {
    const int port = std::stoi(text.substr(colon + 1));
    if (port < 0 || port > 65535) return std::nullopt;
    address.port = static_cast<std::uint16_t>(port);
  } catch (...) {
    return std::nullopt;
  }
  return address;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bucketfs-server: Hugging Face bucket and Xet CAS APIs over local disk", "bucketfs-server"};
  std::string data_dir, listen = "127.0.0.1:0", tokens_file, ready_file;
  std::int64_t token_lifetime = 3600;
  std::string faults;
  app.add_option("--data", data_dir, "Folder for metadata and xorbs (created if missing)")->required();
  app.add_option("--listen", listen, "Address to listen on, HOST:PORT; port 0 picks a free port")
      ->capture_default_str();
  app.add_option("--tokens", tokens_file,
                 "Tokens file: '<token> <read|write> <namespace>[,...]' per line (default: DATA/tokens, "
                 "created with a write token for namespace 'local')");
  app.add_option("--ready-file", ready_file, "Write the base URL here once connections are accepted");
  app.add_option("--token-lifetime", token_lifetime,
                 "Seconds a CAS token and a signed xorb URL stay valid")
      ->capture_default_str()
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{7} * 24 * 3600));
  app.add_option("--inject-faults", faults,
                 "For client tests: 'rate=R[,seed=N][,kinds=K+K...][,stall_ms=MS]' gives a share R of requests a "
                 "fault: status (500, 503 or 429; the default), reset, stall, truncate, flip (xorb bytes)");
  app.set_version_flag("--version", std::string("bucketfs-server ") + BUCKETFS_VERSION);
  CLI11_PARSE(app, argc, argv);

  const auto address = parse_listen(listen);
  if (!address) {
    std::fprintf(stderr, "bucketfs-server: --listen must be HOST:PORT, not '%s'\n", listen.c_str());
    return 2;
  }

  // Block the stop signals in every thread; the main thread waits for them below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  bucketfs::server::BucketServerOptions options;
  options.data_dir = data_dir;
  options.tokens_file = tokens_file;
  options.cas_token_lifetime_seconds = token_lifetime;
  options.signed_url_lifetime_seconds = token_lifetime;
  if (!faults.empty()) {
    for (std::size_t start = 0; start < faults.size();) {
      const auto comma = faults.find(',', start);
      const std::string item = faults.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      const auto equals = item.find('=');
      const std::string key = item.substr(0, equals);
      const std::string value = equals == std::string::npos ? "" : item.substr(equals + 1);
      try {
        if (key == "rate") {
          options.fault_rate = std::stod(value);
        } else if (key == "seed") {
          options.fault_seed = std::stoull(value);
        } else if (key == "stall_ms") {
          options.fault_stall_ms = std::stoll(value);
          if (options.fault_stall_ms < 0) throw std::invalid_argument(key);
        } else if (key == "kinds") {
          using O = bucketfs::server::BucketServerOptions;
          options.fault_kinds = 0;
          for (std::size_t at = 0; at <= value.size();) {
            const auto plus = value.find('+', at);
            const std::string kind = value.substr(at, plus == std::string::npos ? std::string::npos : plus - at);
            if (kind == "status") options.fault_kinds |= O::kFaultStatus;
            else if (kind == "reset") options.fault_kinds |= O::kFaultReset;
            else if (kind == "stall") options.fault_kinds |= O::kFaultStall;
            else if (kind == "truncate") options.fault_kinds |= O::kFaultTruncate;
            else if (kind == "flip") options.fault_kinds |= O::kFaultFlip;
            else if (kind == "all") options.fault_kinds |= 31;
            else throw std::invalid_argument(kind);
            if (plus == std::string::npos) break;
            at = plus + 1;
          }
        } else {
          throw std::invalid_argument(key);
        }
      } catch (const std::exception&) {
        std::fprintf(stderr, "bucketfs-server: --inject-faults: cannot use '%s' (expected rate=R[,seed=N][,kinds=status+reset+stall+truncate+flip][,stall_ms=MS])\n",
                     item.c_str());
        return 2;
      }
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    if (options.fault_rate < 0 || options.fault_rate > 1) {
      std::fprintf(stderr, "bucketfs-server: --inject-faults: rate must be between 0 and 1\n");
      return 2;
    }
  }
  auto server = bucketfs::server::BucketServer::open(options);
  if (!server) {
    std::fprintf(stderr, "bucketfs-server: %s\n", server.error().c_str());
    return 1;
  }
  auto* app_server = server->get();

  bucketfs::server::HttpServerOptions http_options;
  http_options.address = address->host;
  http_options.port = address->port;
  bucketfs::server::HttpServer http(
      http_options,
      [app_server](const bucketfs::server::HttpRequest& request) { return app_server->decide(request); },
      [app_server](bucketfs::server::HttpRequest&& request) { return app_server->handle(std::move(request)); });
  if (auto started = http.start(); !started) {
    std::fprintf(stderr, "bucketfs-server: %s\n", started.error().c_str());
    return 1;
  }
  const std::string base_url = "http://" + address->host + ":" + std::to_string(http.port());
  app_server->set_base_url(base_url);
  if (app_server->created_default_tokens()) {
    std::printf("bucketfs-server: created a write token for namespace 'local' in %s\n",
                app_server->tokens_path().c_str());
  }
  if (!ready_file.empty()) {
    const std::string temporary = ready_file + ".tmp";
    std::ofstream out(temporary);
    out << base_url << "\n";
    out.close();
    if (!out || std::rename(temporary.c_str(), ready_file.c_str()) != 0) {
      std::fprintf(stderr, "bucketfs-server: cannot write ready file %s\n", ready_file.c_str());
      return 1;
    }
  }
  std::printf("bucketfs-server: listening on %s (data in %s)\n", base_url.c_str(), data_dir.c_str());
  std::fflush(stdout);

  int received = 0;
  sigwait(&stop_signals, &received);
  std::printf("bucketfs-server: %s received, stopping\n", received == SIGTERM ? "SIGTERM" : "SIGINT");
  std::fflush(stdout);
  http.stop();
  return 0;
}
