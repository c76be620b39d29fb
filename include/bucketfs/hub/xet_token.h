#pragma once
// CAS access tokens for one bucket: fetched from the Hub (xet-read-token or xet-write-token),
// cached, refreshed before they expire, and refreshed at once after a CAS 401.
//
// Refresh rule: a cached token is used while more than `refresh_margin` (default 60 s; the spec
// suggests at least 30 s, the npm client uses 60 s) remain before its `exp`. Otherwise the next
// get() fetches a new one.
//
// Concurrency: get() and invalidate() may be called from many threads. At most one fetch is in
// flight: threads that need a token while one is being fetched wait for it and share its result
// (also its error), so N threads asking at once cause one request. The fetch runs without the
// lock held. A waiting thread's CancellationToken is not consulted while it waits (the fetch has
// the transport's timeouts); the fetching thread's token is passed to the transport.
//
// Secrets: XetCredentials::access_token is a CAS token; never print or log it.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>

#include "bucketfs/hub/hub_client.h"

namespace bucketfs::hub {

struct XetCredentials {
  std::string access_token;  // SECRET
  std::int64_t exp = 0;      // unix seconds
  std::string cas_url;       // no trailing '/'
};

struct XetTokenOptions {
  bool write = false;  // xet-write-token (write scope, also reads) instead of xet-read-token
  std::chrono::seconds refresh_margin{60};
  // Unix seconds now; replaceable for tests. Default: the system clock.
  std::function<std::int64_t()> now_s;
};

class XetTokenSource {
 public:
  // `hub` must outlive this object.
  XetTokenSource(const HubClient& hub, naming::BucketId bucket, XetTokenOptions options = {});

  // A token with more than refresh_margin left, fetching one if needed (see the top).
  HubResult<XetCredentials> get(const http::CancellationToken* cancel = nullptr);

  // The server refused `rejected` (a CAS 401): drop it so the next get() fetches a new token. A
  // no-op when the cache already holds another token (someone refreshed meanwhile), so N threads
  // that all saw the same 401 cause one fetch.
  void invalidate(const std::string& rejected);

  // How many tokens were fetched (successfully or not). For tests and metrics.
  std::uint64_t fetch_count() const;

  const naming::BucketId& bucket() const { return bucket_; }
  bool write() const { return options_.write; }

 private:
  bool usable(const XetCredentials& credentials) const;  // REQUIRES: mutex_ held

  const HubClient& hub_;
  naming::BucketId bucket_;
  XetTokenOptions options_;

  mutable std::mutex mutex_;
  std::condition_variable fetched_;           // signalled when a fetch ends
  std::optional<XetCredentials> cached_;      // GUARDED_BY(mutex_)
  bool fetching_ = false;                     // GUARDED_BY(mutex_)
  std::uint64_t generation_ = 0;              // GUARDED_BY(mutex_): fetches completed
  std::optional<HubError> last_error_;        // GUARDED_BY(mutex_): of the last fetch
  std::uint64_t fetches_ = 0;                 // GUARDED_BY(mutex_)
};

}  // namespace bucketfs::hub
