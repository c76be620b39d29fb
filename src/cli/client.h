#pragma once
// What every command that talks to a Hub shares: the --endpoint and --token-file options, the
// settings they resolve to (HF_ENDPOINT, HF_TOKEN, HF_TOKEN_PATH, ~/.cache/huggingface/token), and
// one HTTP transport with retries under a HubClient. Built on first use.

#include <CLI/CLI.hpp>
#include <memory>
#include <optional>
#include <string>

#include "bucketfs/http/curl_transport.h"
#include "bucketfs/http/retry.h"
#include "bucketfs/hub/hub_client.h"

namespace bucketfs::cli {

struct ClientOptions {
  std::string endpoint;    // empty: HF_ENDPOINT, else huggingface.co
  std::string token_file;  // empty: HF_TOKEN, HF_TOKEN_PATH, ~/.cache/huggingface/token
};

// Adds --endpoint and --token-file to `command`, writing into `options`.
void add_client_options(CLI::App& command, ClientOptions& options);

class Client {
 public:
  // Resolves the settings; the error is one line (never the token).
  static std::expected<std::unique_ptr<Client>, std::string> connect(const ClientOptions& options);

  hub::HubClient& hub() { return *hub_; }
  http::Transport& transport() { return retrying_; }
  const hub::HubSettings& settings() const { return settings_; }

 private:
  explicit Client(hub::HubSettings settings);
  hub::HubSettings settings_;
  http::CurlTransport curl_;
  http::RetryingTransport retrying_;
  std::unique_ptr<hub::HubClient> hub_;
};

// "10G", "512M", "1.5T", "4096": bytes (K, M, G, T are powers of 1024, optionally with "iB").
// The error is one line naming `option`.
std::expected<std::uint64_t, std::string> parse_size(const std::string& text, const std::string& option);

// $XDG_CACHE_HOME/bucketfs, else ~/.cache/bucketfs.
std::string default_cache_dir();

// Prints "bucketfs: <message>" on stderr and returns the exit status for a failed command.
int fail(const std::string& message);

// One line for a hub error, naming what the user asked for.
std::string explain(const hub::HubError& error, const std::string& subject);

}  // namespace bucketfs::cli
