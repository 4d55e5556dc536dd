module github.com/durable-gateway/durable-gateway/examples/go_backend

go 1.19

require github.com/durable-gateway/durable-gateway/clients/go v0.0.0

// The client from this checkout, not a published version.
replace github.com/durable-gateway/durable-gateway/clients/go => ../../clients/go
