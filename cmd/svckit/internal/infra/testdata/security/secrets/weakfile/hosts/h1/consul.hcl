# weakened on purpose: every setting infra check --secrets reads is wrong
encrypt_verify_incoming = false
tls {
  defaults {
    ca_file         = "/secrets/ca.pem"
    verify_incoming = false
  }
  internal_rpc { verify_server_hostname = false }
}
acl {
  enabled        = true
  default_policy = "allow"
}
