# The laptop's NSQ programs, registered by the local Consul agent itself so
# that svckit services find them like any other service: port = TCP port,
# meta.http_port = HTTP port, health = nsqd/nsqlookupd's own /ping.
services = [
  {
    id      = "nsqd-127.0.0.1-4150"
    name    = "nsqd"
    address = "127.0.0.1"
    port    = 4150
    meta    = { http_port = "4151" }
    check   = { id = "nsqd-ping", name = "nsqd /ping", http = "http://127.0.0.1:4151/ping", interval = "2s", timeout = "1s" }
  },
  {
    id      = "nsqlookupd-127.0.0.1-4160"
    name    = "nsqlookupd"
    address = "127.0.0.1"
    port    = 4160
    meta    = { http_port = "4161" }
    check   = { id = "nsqlookupd-ping", name = "nsqlookupd /ping", http = "http://127.0.0.1:4161/ping", interval = "2s", timeout = "1s" }
  }
]
