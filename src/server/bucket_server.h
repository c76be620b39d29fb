#pragma once
// The routes of bucketfs-server: the Hub bucket API (BUCKET_API.md section 3) and the Xet CAS
// API (xet-spec/api.md) over MetadataStore and XorbStore, with authorization and metrics.
//
// Authorization:
//  - Hub routes take `Authorization: Bearer <hub token>` (tokens file) or nothing (anonymous).
//    A public bucket is readable by anyone; a private one only by tokens of its namespace, and
//    is a 404 (RepoNotFound) to everyone else (401 when anonymous, as the Hub answers).
//    Writing needs a write token of the namespace.
//  - CAS routes take the CAS token issued by xet-read-token / xet-write-token: signed, scoped to
//    one bucket and an access level, expiring (401 when expired or forged, 403 when a read token
//    writes). A file's reconstruction is only given to a token of a bucket that uploaded or holds
//    the file.
//  - Xorb bytes are served at signed URLs (the reconstruction responses point to them) that
//    carry their own authorization: xorb, byte range and expiry under the server's MAC.

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "http_server.h"
#include "metadata_store.h"
#include "metrics.h"
#include "tokens.h"
#include "xorb_store.h"

namespace bucketfs::server {

struct BucketServerOptions {
  std::string data_dir;
  std::string tokens_file;  // empty: DATA/tokens, created with a write token for `local`
  std::int64_t cas_token_lifetime_seconds = 3600;
  // Fault injection for tests of clients (--inject-faults): this share of requests (all routes
  // but /metrics) gets one fault of a kind drawn from `fault_kinds` among those that apply to it:
  //  - status: answered 500, 503 or 429 (Retry-After: 0) before anything is done;
  //  - reset: the connection is closed without an answer (the request is not handled);
  //  - stall: the request is handled as usual, then nothing is sent for `fault_stall_ms` before the
  //    answer (a client whose stall timeout is shorter gives up and retries a request that already
  //    took effect, so its retries must be idempotent);
  //  - truncate (GET only): the response announces its Content-Length, sends a part of the body and
  //    closes the connection (an empty body: the connection is closed without an answer);
  //  - flip (GET of a signed xorb URL only): one byte of the xorb bytes sent is inverted.
  // Each injected fault is counted in /metrics (bucketfs_injected_faults_total{kind}).
  double fault_rate = 0;
  std::uint64_t fault_seed = 1;
  enum FaultKind : unsigned { kFaultStatus = 1, kFaultReset = 2, kFaultStall = 4, kFaultTruncate = 8, kFaultFlip = 16 };
  unsigned fault_kinds = kFaultStatus;
  std::int64_t fault_stall_ms = 31000;  // past the client's 30 s stall timeout
  std::int64_t signed_url_lifetime_seconds = 3600;
  // Clock (unix milliseconds); replaceable so tests can expire tokens.
  std::function<std::int64_t()> now_ms;
};

class BucketServer {
 public:
  // Opens (creating) the data folder: metadata, xorbs, secret, tokens.
  static std::expected<std::unique_ptr<BucketServer>, std::string> open(BucketServerOptions options);

  // Set once the listening address is known: the base of every absolute URL we hand out.
  void set_base_url(std::string base_url) { base_url_ = std::move(base_url); }
  const std::string& base_url() const { return base_url_; }
  // Where the tokens came from (printed at start-up, never the tokens themselves).
  const std::string& tokens_path() const { return tokens_path_; }
  bool created_default_tokens() const { return created_default_tokens_; }

  // The two phases of HttpServer's handler.
  RouteDecision decide(const HttpRequest& request);
  HttpResponse handle(HttpRequest&& request);

 private:
  BucketServer(BucketServerOptions options, MetadataStore metadata, XorbStore xorbs, HubTokens tokens, Signer signer)
      : options_(std::move(options)), metadata_(std::move(metadata)), xorbs_(std::move(xorbs)),
        tokens_(std::move(tokens)), signer_(std::move(signer)) {}

  struct Routed;
  HttpResponse dispatch(HttpRequest& request, std::string& route);

  bool inject_fault(const HttpRequest& request);
  std::uint64_t next_fault_random();  // SplitMix64 over fault_state_

  BucketServerOptions options_;
  std::mutex fault_mutex_;
  std::uint64_t fault_state_ = 0;  // GUARDED_BY(fault_mutex_)
  MetadataStore metadata_;
  XorbStore xorbs_;
  HubTokens tokens_;
  Signer signer_;
  Metrics metrics_;
  std::string base_url_;
  std::string tokens_path_;
  bool created_default_tokens_ = false;

  friend class Handlers;
};

}  // namespace bucketfs::server
