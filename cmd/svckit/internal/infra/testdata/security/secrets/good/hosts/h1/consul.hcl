# as svckit secrets init writes it, with values that are no secret (tests)
encrypt = "dGVzdHMgb25seTogbm90IGEgZ29zc2lwIGtleSEhIQ=="
encrypt_verify_incoming = true
encrypt_verify_outgoing = true
tls {
  defaults {
    ca_file         = "/secrets/ca.pem"
    cert_file       = "/secrets/hosts/h1/consul.pem"
    key_file        = "/secrets/hosts/h1/consul-key.pem"
    verify_incoming = true
    verify_outgoing = true
    tls_min_version = "TLSv1_2"
  }
  https { verify_incoming = false }
  internal_rpc { verify_server_hostname = true }
}
acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
  tokens {
    initial_management               = "00000000-0000-4000-8000-000000000002"
    agent                            = "00000000-0000-4000-8000-000000000001"
    config_file_service_registration = "00000000-0000-4000-8000-000000000001"
  }
}
