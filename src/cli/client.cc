#include "client.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace bucketfs::cli {

void add_client_options(CLI::App& command, ClientOptions& options) {
  command.add_option("--endpoint", options.endpoint, "Hub URL (default: $HF_ENDPOINT, else https://huggingface.co)");
  command.add_option("--token-file", options.token_file,
                     "File holding the Hub token (default: $HF_TOKEN, $HF_TOKEN_PATH, ~/.cache/huggingface/token)");
}

namespace {
http::CurlTransportOptions transport_options() {
  http::CurlTransportOptions options;
  options.user_agent = std::string("bucketfs/") + BUCKETFS_VERSION;
  if (const char* stall = std::getenv("BUCKETFS_HTTP_STALL_TIMEOUT_MS"); stall && *stall) {
    options.stall_timeout = std::chrono::milliseconds(std::strtoll(stall, nullptr, 10));
  }
  return options;
}
}  // namespace

Client::Client(hub::HubSettings settings)
    : settings_(std::move(settings)), curl_(transport_options()), retrying_(curl_, http::RetryPolicy{}) {
  hub_ = std::make_unique<hub::HubClient>(retrying_, settings_);
}

std::expected<std::unique_ptr<Client>, std::string> Client::connect(const ClientOptions& options) {
  hub::SettingsOptions wanted;
  if (!options.endpoint.empty()) wanted.endpoint = options.endpoint;
  if (!options.token_file.empty()) wanted.token_file = options.token_file;
  auto settings = hub::discover_settings(wanted, hub::process_environment(), hub::read_small_file);
  if (!settings) return std::unexpected(settings.error().message);
  return std::unique_ptr<Client>(new Client(std::move(*settings)));
}

int fail(const std::string& message) {
  std::fprintf(stderr, "bucketfs: %s\n", message.c_str());
  return 1;
}

std::expected<std::uint64_t, std::string> parse_size(const std::string& text, const std::string& option) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || value < 0) return std::unexpected(option + ": '" + text + "' is not a size");
  std::uint64_t unit = 1;
  const std::string suffix = end;
  if (suffix == "K" || suffix == "KiB" || suffix == "k") unit = 1ULL << 10;
  else if (suffix == "M" || suffix == "MiB") unit = 1ULL << 20;
  else if (suffix == "G" || suffix == "GiB") unit = 1ULL << 30;
  else if (suffix == "T" || suffix == "TiB") unit = 1ULL << 40;
  else if (!suffix.empty()) return std::unexpected(option + ": unknown unit in '" + text + "' (use K, M, G, T)");
  return static_cast<std::uint64_t>(value * static_cast<double>(unit));
}

std::string default_cache_dir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return std::string(xdg) + "/bucketfs";
  if (const char* home = std::getenv("HOME"); home && *home) return std::string(home) + "/.cache/bucketfs";
  return "/tmp/bucketfs-cache-" + std::to_string(::getuid());
}

std::string explain(const hub::HubError& error, const std::string& subject) {
  switch (error.kind) {
    case hub::HubErrorKind::bucket_not_found:
      return subject + ": bucket not found (or no permission to see it)";
    case hub::HubErrorKind::entry_not_found:
      return subject + ": no such file";
    case hub::HubErrorKind::unauthorized:
      return subject + ": not authorized (set HF_TOKEN or --token-file)";
    case hub::HubErrorKind::forbidden:
      return subject + ": permission denied";
    case hub::HubErrorKind::already_exists:
      return subject + ": already exists";
    default:
      return subject + ": " + error.describe();
  }
}

}  // namespace bucketfs::cli
