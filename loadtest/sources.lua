-- Shared by misses.lua and mix.lua: count the answers by X-Recommendations-Source (personalize, stale, batch,
-- fallback; "none" when absent, as from the boto3 proxy) and print them from done() as one line:
-- SOURCE_STATS personalize=N stale=N batch=N fallback=N none=N
local sources = {}
local names = { "personalize", "stale", "batch", "fallback", "none" }

-- The threads wrk made (in its main Lua state), numbered into each thread's `tid`: `setup = sources.setup`.
sources.threads = {}

function sources.setup(thread)
  table.insert(sources.threads, thread)
  thread:set("tid", #sources.threads)
end

-- `done = sources.finish`: print the counts of every thread sources.setup saw.
function sources.finish()
  sources.done(sources.threads)
end

function sources.init()
  for _, name in ipairs(names) do
    _G["src_" .. name] = 0
  end
end

function sources.response(status, headers, body)
  local source = headers["X-Recommendations-Source"] or headers["x-recommendations-source"] or "none"
  local name = "src_" .. source
  _G[name] = (_G[name] or 0) + 1
end

function sources.done(threads)
  local parts = {}
  for _, name in ipairs(names) do
    local total = 0
    for _, thread in ipairs(threads) do
      total = total + (thread:get("src_" .. name) or 0)
    end
    parts[#parts + 1] = name .. "=" .. total
  end
  io.write("SOURCE_STATS " .. table.concat(parts, " ") .. "\n")
end

return sources
