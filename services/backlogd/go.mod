module github.com/backlog/controlplane/services/backlogd

go 1.26.0

replace (
	github.com/backlog/controlplane/gen => ../../gen
	github.com/backlog/controlplane/services/agent => ../agent
	github.com/backlog/controlplane/services/automation => ../automation
	github.com/backlog/controlplane/services/credential => ../credential
	github.com/backlog/controlplane/services/gateway => ../gateway
	github.com/backlog/controlplane/services/kit => ../kit
	github.com/backlog/controlplane/services/vault => ../vault
)

require (
	github.com/backlog/controlplane/gen v0.0.0-00010101000000-000000000000
	github.com/backlog/controlplane/services/agent v0.0.0-00010101000000-000000000000
	github.com/backlog/controlplane/services/automation v0.0.0-00010101000000-000000000000
	github.com/backlog/controlplane/services/credential v0.0.0-00010101000000-000000000000
	github.com/backlog/controlplane/services/gateway v0.0.0-00010101000000-000000000000
	github.com/backlog/controlplane/services/kit v0.0.0-00010101000000-000000000000
	github.com/backlog/controlplane/services/vault v0.0.0-00010101000000-000000000000
	github.com/chromedp/cdproto v0.160.1
	github.com/chromedp/chromedp v0.23.1
	github.com/fullstorydev/grpchan v1.1.2
	github.com/oapi-codegen/runtime v1.9.0
	github.com/prometheus/client_golang v1.25.0
	go.etcd.io/etcd/client/v3 v3.7.3
	go.uber.org/zap v1.28.0
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261005182115-fad411399dd8
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/ThalesGroup/crypto11 v1.6.2 // indirect
	github.com/apapsch/go-jsonmerge/v2 v2.0.0 // indirect
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/bufbuild/protocompile v0.9.0 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/coreos/go-semver v0.3.1 // indirect
	github.com/coreos/go-systemd/v22 v22.7.0 // indirect
	github.com/go-json-experiment/json v0.0.0-20260213210345-44df1a37e875 // indirect
	github.com/golang/protobuf v1.5.4 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus v1.1.1 // indirect
	github.com/grpc-ecosystem/go-grpc-middleware/v2 v2.3.4 // indirect
	github.com/grpc-ecosystem/grpc-gateway/v2 v2.32.0 // indirect
	github.com/jhump/protoreflect v1.15.6 // indirect
	github.com/miekg/pkcs11 v1.1.2 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	github.com/thales-e-security/pool v0.0.2 // indirect
	go.etcd.io/bbolt v1.5.0 // indirect
	go.etcd.io/etcd/api/v3 v3.7.3 // indirect
	go.etcd.io/etcd/client/pkg/v3 v3.7.3 // indirect
	go.uber.org/multierr v1.11.0 // indirect
	golang.org/x/net v0.61.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	golang.org/x/time v0.16.0 // indirect
	google.golang.org/genproto/googleapis/api v0.0.0-20261012220534-4341edf3f941 // indirect
)
