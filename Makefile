# Backlog control plane. `make run` starts everything; `make test` proves it.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# Every Go module tied by go.work (tools/ is kept apart: buf pins its own deps).
MODULES := gen services/kit services/credential services/automation services/agent services/vault services/gateway services/backlogd services/cli services/bench services/reliability services/deploycheck services/sdk
TOOLS   := tools/bin/buf tools/bin/protoc-gen-go tools/bin/protoc-gen-go-grpc tools/bin/protoc-gen-grpc-gateway tools/bin/protoc-gen-openapiv2 tools/bin/openapi tools/bin/oapi-codegen
# protoc-gen-openapiv2 writes Swagger 2.0; tools/openapi makes it the OpenAPI 3 document served at /openapi.json.
OPENAPI_CONVERT := tools/bin/openapi -in gen/openapi/backlog.swagger.json -out gen/openapi/openapi.json -rm-in
# A client generated from that document (test-only: services/backlogd/e2e/eco_openapi_test.go).
OPENAPI_CLIENT := services/backlogd/e2e/openapiclient
# The OpenAPI linter (npm, run through npx in verify only; recommended rules, 0 errors allowed).
REDOCLY := npx --yes @redocly/cli@2.77.0
BUF     := tools/bin/buf
DATA_DIR ?= ./data
GO_TEST_FLAGS ?= -race -count=1 -timeout 10m

.PHONY: all build run test test-go verify verify-openapi verify-gen verify-work verify-modules verify-imports verify-breaking lint generate tools clean bench soak run-ha

all: build

## build: bin/backlogd (the server) and bin/backlog (the CLI)
# backlogd version (and the backlog_build_info metric) report VERSION.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
build:
	go build -ldflags "-X github.com/backlog/controlplane/services/backlogd/app.Version=$(VERSION)" -o bin/backlogd ./services/backlogd/cmd/backlogd
	go build -o bin/backlog ./services/cli/cmd/backlog

## run: every service plus the gateway on 127.0.0.1:8080 (plain HTTP on loopback),
## stores under ./data. For development it creates a vault key-encryption key in
## ./data once; in production keep that key away from the data it protects. After a
## rotation to ./data/vault.kek.next (docs/operations.md, "Rotating … with make run")
## it makes that key the current one, keeping the old as vault.kek.old, loaded as a
## previous key so that an interrupted rotation finishes at start.
run: build
	@mkdir -p $(DATA_DIR) && chmod 700 $(DATA_DIR)
	@if [ -f $(DATA_DIR)/vault.kek.next ]; then \
	  cp -p $(DATA_DIR)/vault.kek $(DATA_DIR)/vault.kek.old && mv $(DATA_DIR)/vault.kek.next $(DATA_DIR)/vault.kek && \
	  echo "vault: $(DATA_DIR)/vault.kek.next is now $(DATA_DIR)/vault.kek (the old key is $(DATA_DIR)/vault.kek.old: delete it once secrets work)"; fi
	@bin/backlogd vault gen-kek -out $(DATA_DIR)/vault.kek
	bin/backlogd -target=all -data-dir $(DATA_DIR) -vault-kek-file $(DATA_DIR)/vault.kek \
	  $$([ -f $(DATA_DIR)/vault.kek.old ] && echo -vault-kek-previous-files $(DATA_DIR)/vault.kek.old)

## run-ha: etcd mode on loopback (tools/run-ha.sh): 3 etcd members, 2 replicas of every
## service (each its own backlogd) and the gateway on 127.0.0.1:8080; keys in ./data-ha.
## Ctrl-C stops everything.
run-ha: build tools/bin/etcd
	tools/run-ha.sh

## test: every module's tests with -race (end-to-end included), then verify.
## Each module is tested on its own (GOWORK=off): its go.mod must stand alone.
test: test-go verify

# The etcd HA tests run a real etcd (tools/bin/etcd, built from the module proxy).
test-go: tools/bin/etcd
	@for m in $(MODULES); do echo "== go test $$m"; (cd $$m && GOWORK=off go test $(GO_TEST_FLAGS) ./...); done

## bench: build backlogd, start it on loopback with a temp data dir, seed, measure every
## scenario (full scale: 10 s per load, 100k automations); table on stdout, figures in
## bench.json. BENCH_FLAGS adds flags, e.g. BENCH_FLAGS='-only exchange,read -duration 5s'.
BENCH_FLAGS ?=
bench:
	go run ./services/bench/cmd/bench -scale full -out bench.json $(BENCH_FLAGS)

## soak: the long reliability suites (crash durability, revocation under load, sustained
## load; BACKLOG_SOAK_DURATION sets the load's length, default 2m), then each fuzz target
## for FUZZTIME (default 3m). Short versions of all of them run in `make test`.
FUZZTIME ?= 3m
# Every fuzz target, as package-dir:FuzzName (go test -fuzz takes one package at a time).
FUZZ_TARGETS := services/reliability:FuzzGatewayJSON services/reliability:FuzzUpdateAutomationMask \
	services/reliability:FuzzUpdateMemberMask services/kit/credfmt:FuzzParse services/kit/page:FuzzDecode \
	services/vault:FuzzParseTemplate
soak:
	BACKLOG_SOAK=1 go test -C services/reliability -count=1 -v -run Soak -timeout 60m .
	@for t in $(FUZZ_TARGETS); do d=$${t%%:*}; f=$${t##*:}; echo "== fuzz $$f in $$d for $(FUZZTIME)"; \
	  go test -C $$d -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) . || exit 1; done

## verify: generated code matches the protos and breaks nothing; go.work lists every
## module; each go.mod is tidy; only the bbolt engine imports bbolt; lint
verify: verify-work verify-modules verify-imports verify-gen verify-openapi verify-breaking lint

## verify-openapi: the served OpenAPI document passes redocly's recommended rules with 0 errors
verify-openapi:
	@command -v npx >/dev/null || { echo "verify-openapi needs npx (Node.js 20+) to run the pinned redocly linter"; exit 1; }
	$(REDOCLY) lint --format=stylish gen/openapi/openapi.json

verify-modules:
	@for m in $(MODULES) tools/etcd; do \
	  (cd $$m && GOWORK=off go mod tidy -diff >/dev/null) || { echo "$$m: go.mod/go.sum are not tidy on their own: run (cd $$m && GOWORK=off go mod tidy)"; exit 1; }; \
	done; echo "every module's go.mod is tidy on its own"

# Handlers see the storage seam (kit/store), never an engine: only the bbolt
# engine's package may import bbolt.
verify-imports:
	@bad=$$(git grep -l '"go.etcd.io/bbolt"' -- '*.go' ':!gen/' ':!services/kit/store/boltstore/' || true); \
	if [ -n "$$bad" ]; then echo "bbolt imported outside services/kit/store/boltstore:"; echo "$$bad"; exit 1; fi; \
	echo "bbolt is imported only by the bbolt store engine"
	@bad=$$(cd services/sdk && GOWORK=off go list -deps -test ./... | grep '^github.com/backlog/controlplane/services/' | grep -vE '^github.com/backlog/controlplane/services/sdk([/._ ]|$$)' || true); \
	if [ -n "$$bad" ]; then echo "the SDK (services/sdk) may import only gen/ of the control plane, not:"; echo "$$bad"; exit 1; fi; \
	echo "the SDK imports nothing under services/ but itself"

# buf breaking (FILE rules) against main, or, on main itself, against the
# protos before their last change.
verify-breaking: $(TOOLS)
	@against=$$(tools/breaking-base.sh); \
	if [ -z "$$against" ]; then echo "buf breaking: no earlier protos to compare with"; exit 0; fi; \
	$(BUF) breaking --against ".git#ref=$$against" && echo "buf breaking: no breaking change against $$against"

verify-work:
	@mods=$$(find . -name go.mod -not -path './tools/*' -not -path './.tmp/*' | sed 's|^\./||; s|/go.mod$$||' | sort); \
	for m in $$mods; do \
	  grep -qE "^\s*\./$$m\s*$$" go.work || { echo "go.work does not use ./$$m"; exit 1; }; \
	  echo " $(MODULES) " | grep -q " $$m " || { echo "Makefile MODULES misses $$m"; exit 1; }; \
	done; echo "go.work lists every module"

verify-gen: $(TOOLS)
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	cp -r proto third_party buf.yaml buf.gen.yaml $$tmp/; mkdir -p $$tmp/tools; ln -s $(CURDIR)/tools/bin $$tmp/tools/bin; \
	(cd $$tmp && ./tools/bin/buf generate && ./$(OPENAPI_CONVERT)); \
	mkdir -p $$tmp/$(OPENAPI_CLIENT) && (cd $$tmp && ./tools/bin/oapi-codegen -config $(CURDIR)/$(OPENAPI_CLIENT)/oapi-codegen.yaml gen/openapi/openapi.json); \
	diff -r $$tmp/gen/go gen/go && diff -r $$tmp/gen/openapi gen/openapi && diff $$tmp/$(OPENAPI_CLIENT)/client.gen.go $(OPENAPI_CLIENT)/client.gen.go \
	  || { echo "gen/ differs from the protos: run make generate and commit"; exit 1; }; \
	echo "gen/ matches the protos"

lint: $(TOOLS)
	$(BUF) lint
	$(BUF) format --diff --exit-code
	@for m in $(MODULES); do (cd $$m && go vet ./...); done
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/') 2>/dev/null || true); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## generate: regenerate gen/ from proto/ (offline: local plugins pinned in gen/go.mod)
generate: $(TOOLS)
	$(BUF) format -w
	$(BUF) lint
	$(BUF) generate
	$(OPENAPI_CONVERT)
	tools/bin/oapi-codegen -config $(OPENAPI_CLIENT)/oapi-codegen.yaml gen/openapi/openapi.json

## tools: build buf (pinned in tools/go.mod), the protoc plugins (pinned in gen/go.mod) and etcd (tools/etcd)
tools: $(TOOLS) tools/bin/etcd

# etcd server and client pinned in tools/etcd (etcdmain/ctlv3 from the module proxy).
tools/bin/etcd: tools/etcd/go.mod tools/etcd/go.sum tools/etcd/main.go
	GOWORK=off go build -C tools/etcd -o ../bin/etcd .
tools/bin/etcdctl: tools/etcd/go.mod tools/etcd/go.sum tools/etcd/etcdctl/main.go
	GOWORK=off go build -C tools/etcd -o ../bin/etcdctl ./etcdctl

tools/bin/buf: tools/go.mod
	GOWORK=off go build -C tools -o bin/buf github.com/bufbuild/buf/cmd/buf

tools/bin/protoc-gen-go: gen/go.mod
	GOWORK=off go build -C gen -o ../tools/bin/ google.golang.org/protobuf/cmd/protoc-gen-go
tools/bin/protoc-gen-go-grpc: gen/go.mod
	GOWORK=off go build -C gen -o ../tools/bin/ google.golang.org/grpc/cmd/protoc-gen-go-grpc
tools/bin/protoc-gen-grpc-gateway: gen/go.mod
	GOWORK=off go build -C gen -o ../tools/bin/ github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway
tools/bin/openapi: tools/openapi/go.mod tools/openapi/main.go
	GOWORK=off go build -C tools/openapi -o ../bin/openapi .
tools/bin/oapi-codegen: tools/openapi/go.mod
	GOWORK=off go build -C tools/openapi -o ../bin/ github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen
tools/bin/protoc-gen-openapiv2: gen/go.mod
	GOWORK=off go build -C gen -o ../tools/bin/ github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2

clean:
	rm -rf bin tools/bin
