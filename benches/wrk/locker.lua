-- wrk: lock+unlock cycles through Locker's HTTP API, for Locker 1.0b itself
-- and for hasp's Locker door, by `cargo bench --bench serve`:
--
--   wrk -t N -c N -d 3s --latency -s locker.lua http://ADDR -- TAG
--
-- Each connection (one per thread) alternates GET /canhaz/NAME?id=CLIENT
-- and GET /nowant/NAME?token=TOKEN, the token read from the canhaz reply,
-- over 16 resources of its own, bench/TAG/THREAD/0..15 (hierarchical).
-- A failure is a status other than 200 or a body without "ok": true (and a
-- token, for canhaz); done() prints their count.

dofile(string.match(debug.getinfo(1, "S").source, "^@(.-)[^/]*$") .. "common.lua")

local tag, client, name
local i = 0
local token = nil -- held on `name` when set: the next request is its nowant

function init(args)
   tag = args[1] or "wrk"
   client = "w" .. id
end

function request()
   if token then
      return wrk.format("GET", "/nowant/" .. name .. "?token=" .. token)
   end
   name = string.format("bench/%s/%d/%d", tag, id, i % 16)
   i = i + 1
   return wrk.format("GET", "/canhaz/" .. name .. "?id=" .. client)
end

function response(status, headers, body)
   local ok = status == 200 and string.find(body, '"ok":%s*true') ~= nil
   if token then
      token = nil
      if not ok then
         fail("nowant " .. name, status, body)
      end
   else
      token = ok and string.match(body, '"token":%s*"([^"]+)"') or nil
      if not token then
         fail("canhaz " .. name, status, body)
      end
   end
end
