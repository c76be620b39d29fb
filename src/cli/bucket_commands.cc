#include "bucket_commands.h"

#include <cstdio>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "bucketfs/naming/naming.h"
#include "client.h"

namespace bucketfs::cli {
namespace {

struct CreateArgs {
  ClientOptions client;
  std::string bucket;
  bool is_private = false;
  bool exist_ok = false;
};

struct DeleteArgs {
  ClientOptions client;
  std::string bucket;
};

struct ListArgs {
  ClientOptions client;
  std::string target;
  bool recursive = false;
  bool long_format = false;
};

struct RemoveArgs {
  ClientOptions client;
  std::vector<std::string> targets;
  bool recursive = false;
};

// A bucket given as ns/name or hf://buckets/ns/name, with no path inside it.
std::expected<naming::BucketId, std::string> bucket_only(const std::string& text) {
  auto parsed = naming::parse_bucket_path(text);
  if (!parsed) return std::unexpected(parsed.error());
  if (!parsed->path.empty()) return std::unexpected("'" + text + "' names a path inside a bucket, not a bucket");
  return parsed->bucket;
}

int run_create(const CreateArgs& args) {
  auto id = bucket_only(args.bucket);
  if (!id) return fail(id.error());
  auto client = Client::connect(args.client);
  if (!client) return fail(client.error());
  hub::CreateBucketOptions options;
  if (args.is_private) options.is_private = true;
  options.exist_ok = args.exist_ok;
  auto created = (*client)->hub().create_bucket(*id, options);
  if (!created) return fail(explain(created.error(), "hf://buckets/" + id->str()));
  std::printf("%s hf://buckets/%s\n", created->already_existed ? "exists" : "created", created->id.c_str());
  return 0;
}

int run_delete(const DeleteArgs& args) {
  auto id = bucket_only(args.bucket);
  if (!id) return fail(id.error());
  auto client = Client::connect(args.client);
  if (!client) return fail(client.error());
  if (auto deleted = (*client)->hub().delete_bucket(*id); !deleted) {
    return fail(explain(deleted.error(), "hf://buckets/" + id->str()));
  }
  std::printf("deleted hf://buckets/%s\n", id->str().c_str());
  return 0;
}

std::string iso_time(std::optional<std::int64_t> ms) {
  if (!ms) return std::string(20, ' ');
  const std::time_t seconds = static_cast<std::time_t>(*ms / 1000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

// Whether `path` is `prefix` itself or lies below it (the Hub matches prefixes lexically).
bool under(std::string_view path, std::string_view prefix) {
  return prefix.empty() || path == prefix || (path.starts_with(prefix) && path[prefix.size()] == '/');
}

int run_list(const ListArgs& args) {
  auto client = Client::connect(args.client);
  if (!client) return fail(client.error());
  // A bare namespace lists its buckets.
  std::string_view text = args.target;
  if (text.starts_with("hf://buckets/")) text.remove_prefix(13);
  while (!text.empty() && text.back() == '/') text.remove_suffix(1);
  if (!text.empty() && text.find('/') == std::string_view::npos) {
    auto buckets = (*client)->hub().list_buckets(text);
    if (!buckets) return fail(explain(buckets.error(), "hf://buckets/" + std::string(text)));
    for (const auto& bucket : *buckets) {
      if (args.long_format) {
        std::printf("%14llu %s %-7s hf://buckets/%s\n", static_cast<unsigned long long>(bucket.size),
                    iso_time(bucket.updated_ms).c_str(), bucket.is_private ? "private" : "public", bucket.id.c_str());
      } else {
        std::printf("hf://buckets/%s\n", bucket.id.c_str());
      }
    }
    return 0;
  }
  auto where = naming::parse_bucket_path(args.target);
  if (!where) return fail(where.error());
  hub::TreeOptions options;
  options.recursive = args.recursive;
  std::size_t shown = 0;
  auto printed = (*client)->hub().for_each_tree_entry(where->bucket, where->path, options, [&](hub::TreeEntry&& entry) {
    if (!under(entry.path(), where->path)) return true;
    ++shown;
    if (entry.is_directory()) {
      if (args.long_format) {
        std::printf("%14s %s %s/\n", "", iso_time(entry.file.uploaded_at_ms).c_str(), entry.path().c_str());
      } else {
        std::printf("%s/\n", entry.path().c_str());
      }
    } else if (args.long_format) {
      std::printf("%14llu %s %s\n", static_cast<unsigned long long>(entry.file.size),
                  iso_time(entry.file.mtime_ms ? entry.file.mtime_ms : entry.file.uploaded_at_ms).c_str(),
                  entry.path().c_str());
    } else {
      std::printf("%s\n", entry.path().c_str());
    }
    return true;
  });
  if (!printed) return fail(explain(printed.error(), where->uri()));
  if (shown == 0 && !where->path.empty()) return fail(where->uri() + ": no such file or directory");
  return 0;
}

int run_remove(const RemoveArgs& args) {
  auto client = Client::connect(args.client);
  if (!client) return fail(client.error());
  int status = 0;
  for (const auto& target : args.targets) {
    auto where = naming::parse_bucket_path(target);
    if (!where) {
      status = fail(where.error());
      continue;
    }
    std::vector<std::string> paths;
    if (args.recursive) {
      auto listed = (*client)->hub().for_each_tree_entry(where->bucket, where->path, {}, [&](hub::TreeEntry&& entry) {
        if (!entry.is_directory() && under(entry.path(), where->path)) paths.push_back(entry.path());
        return true;
      });
      if (!listed) {
        status = fail(explain(listed.error(), where->uri()));
        continue;
      }
    } else {
      if (where->path.empty()) {
        status = fail(where->uri() + ": is a bucket; use -r to remove every file in it, or 'bucketfs delete'");
        continue;
      }
      if (auto problem = naming::object_key_problem(where->path)) {
        status = fail(where->uri() + ": invalid path: " + *problem);
        continue;
      }
      const std::vector<std::string> wanted{where->path};
      auto found = (*client)->hub().paths_info(where->bucket, wanted);
      if (!found) {
        status = fail(explain(found.error(), where->uri()));
        continue;
      }
      if (found->empty()) {
        status = fail(where->uri() + ": no such file (use -r for a folder)");
        continue;
      }
      paths.push_back(where->path);
    }
    if (paths.empty()) {
      status = fail(where->uri() + ": no such file or directory");
      continue;
    }
    constexpr std::size_t kBatch = 1000;
    for (std::size_t start = 0; start < paths.size(); start += kBatch) {
      std::vector<hub::BatchOperation> operations;
      for (std::size_t i = start; i < std::min(paths.size(), start + kBatch); ++i) {
        operations.push_back(hub::BatchOperation::remove(paths[i]));
      }
      auto done = (*client)->hub().batch(where->bucket, operations);
      if (!done) {
        status = fail(explain(done.error(), where->uri()));
        break;
      }
      if (!done->success) {
        status = fail(where->uri() + ": " + (done->failed.empty() ? "refused" : done->failed.front().error));
        break;
      }
      for (const auto& op : operations) {
        std::printf("deleted hf://buckets/%s/%s\n", where->bucket.str().c_str(), op.path.c_str());
      }
    }
  }
  return status;
}

template <typename Args>
void on_run(CLI::App* command, std::shared_ptr<Args> args, int (*run)(const Args&)) {
  command->callback([args, run] {
    const int status = run(*args);
    if (status != 0) throw CLI::RuntimeError(status);
  });
}

}  // namespace

void add_bucket_commands(CLI::App& app) {
  {
    auto args = std::make_shared<CreateArgs>();
    auto* command = app.add_subcommand("create", "Create a bucket");
    command->add_option("BUCKET", args->bucket, "NAMESPACE/NAME or hf://buckets/NAMESPACE/NAME")->required();
    command->add_flag("--private", args->is_private, "Make the bucket private");
    command->add_flag("--exist-ok", args->exist_ok, "Succeed when the bucket already exists");
    add_client_options(*command, args->client);
    on_run(command, args, &run_create);
  }
  {
    auto args = std::make_shared<DeleteArgs>();
    auto* command = app.add_subcommand("delete", "Delete a bucket and every file in it");
    command->add_option("BUCKET", args->bucket, "NAMESPACE/NAME or hf://buckets/NAMESPACE/NAME")->required();
    add_client_options(*command, args->client);
    on_run(command, args, &run_delete);
  }
  {
    auto args = std::make_shared<ListArgs>();
    auto* command = app.add_subcommand("ls", "List the buckets of a namespace, or the files under a bucket path");
    command->add_option("TARGET", args->target, "NAMESPACE, or hf://buckets/NAMESPACE/NAME[/PREFIX]")->required();
    command->add_flag("-R,--recursive", args->recursive, "List every file below, not only the first level");
    command->add_flag("-l,--long", args->long_format, "Show sizes and modification times");
    add_client_options(*command, args->client);
    on_run(command, args, &run_list);
  }
  {
    auto args = std::make_shared<RemoveArgs>();
    auto* command = app.add_subcommand("rm", "Remove files from a bucket");
    command->add_option("PATH", args->targets, "hf://buckets/NAMESPACE/NAME/PATH")->required();
    command->add_flag("-r,--recursive", args->recursive, "Remove every file under PATH");
    add_client_options(*command, args->client);
    on_run(command, args, &run_remove);
  }
}

}  // namespace bucketfs::cli
