-- wrk script for bench/auth: every request carries the next token of a file, in turn
-- (one wrk thread: one sequence over all connections), so with more tokens than the
-- gateway's verified-token cache holds, every request is a cold verification.
--   wrk ... -s bench/auth_cycle.lua URL -- TOKENS_FILE PATH
-- Requests are formatted once in init(): the per-request Lua work is an index and a return.
local reqs, n, i = {}, 0, 0

function init(args)
  local file, path = args[1], args[2] or "/"
  for line in io.lines(file) do
    if #line > 0 then
      n = n + 1
      reqs[n] = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. line })
    end
  end
  if n == 0 then error("no tokens in " .. file) end
end

function request()
  i = i % n + 1
  return reqs[i]
end
