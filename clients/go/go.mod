module github.com/durable-gateway/durable-gateway/clients/go

go 1.19
