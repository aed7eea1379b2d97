-- Cache misses: every request is a user never seen before; each wrk thread numbers its own users.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  n = 0
  prefix = "bench-miss-" .. (os.getenv("BENCH_RUN") or "0") .. "-" .. tid .. "-"
end
request = function()
  n = n + 1
  return wrk.format("GET", "/recommendations?user_id=" .. prefix .. n)
end
