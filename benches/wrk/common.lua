-- Shared by locker.lua and xmlrpc.lua (each loads it with dofile from its
-- own directory): threads numbered in setup(), failures counted per thread
-- and summed in done().
--
-- Each wrk thread has its own Lua state. setup(thread) runs in the main one
-- before the threads start: it gives each thread its number, `id`, with
-- thread:set. init(args), request() and response() run in the thread's
-- state; with one connection per thread (-t N -c N), a thread's state is its
-- connection's, and its requests and responses strictly alternate.

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

failures = 0
first_failure = ""

-- Counts a failure; remembers the first one.
function fail(what, status, body)
   failures = failures + 1
   if first_failure == "" then
      local text = string.gsub(string.sub(body or "", 1, 300), "%s+", " ")
      first_failure = what .. ": " .. tostring(status) .. " " .. text
   end
end

-- After the run: the failures of all threads, on lines the bench reads.
function done(summary, latency, requests)
   local total, first = 0, ""
   for _, thread in ipairs(threads) do
      total = total + (thread:get("failures") or 0)
      local f = thread:get("first_failure") or ""
      if first == "" then
         first = f
      end
   end
   io.write(string.format("wrk-failures: %d\n", total))
   if first ~= "" then
      io.write("wrk-first-failure: " .. first .. "\n")
   end
end
