-- wrk: lock+unlock cycles through gocept.lockd's XML-RPC API (POST /RPC2),
-- for gocept.lockd 0.1 itself and for hasp's XML-RPC door, by `cargo bench
-- --bench serve`:
--
--   wrk -t N -c N -d 3s --latency -s xmlrpc.lua http://ADDR -- TAG
--
-- Each connection (one per thread) alternates lock(NAME, CLIENT) and
-- unlock(NAME, CLIENT) over 16 resources of its own, bench-TAG-THREAD-0..15
-- (flat: gocept.lockd makes a file of each name). A failure is a status
-- other than 200, a <fault>, or neither <nil/> (gocept.lockd's None) nor
-- <boolean>1</boolean> (hasp's true) in the reply; done() prints their count.

dofile(string.match(debug.getinfo(1, "S").source, "^@(.-)[^/]*$") .. "common.lua")

local tag, client, name
local i = 0
local locked = false -- `name` is locked: the next request is its unlock
local headers = { ["Content-Type"] = "text/xml" }

local function call(method)
   return wrk.format("POST", "/RPC2", headers, "<?xml version=\"1.0\"?><methodCall><methodName>"
      .. method .. "</methodName><params><param><value><string>" .. name
      .. "</string></value></param><param><value><string>" .. client
      .. "</string></value></param></params></methodCall>")
end

function init(args)
   tag = args[1] or "wrk"
   client = "w" .. id
end

function request()
   if locked then
      return call("unlock")
   end
   name = string.format("bench-%s-%d-%d", tag, id, i % 16)
   i = i + 1
   return call("lock")
end

function response(status, headers, body)
   local ok = status == 200 and not string.find(body, "<fault>", 1, true)
      and (string.find(body, "<nil/>", 1, true) or string.find(body, "<boolean>1</boolean>", 1, true))
   if not ok then
      fail((locked and "unlock " or "lock ") .. name, status, body)
   end
   locked = ok and not locked
end
