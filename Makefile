# Backlog control plane. `make run` starts everything; `make test` proves it.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# Every Go module tied by go.work (tools/ is kept apart: buf pins its own deps).
MODULES := gen services/kit services/credential services/automation services/agent services/vault services/gateway services/backlogd services/cli services/bench services/reliability services/deploycheck
TOOLS   := tools/bin/buf tools/bin/protoc-gen-go tools/bin/protoc-gen-go-grpc tools/bin/protoc-gen-grpc-gateway tools/bin/protoc-gen-openapiv2
BUF     := tools/bin/buf
DATA_DIR ?= ./data
GO_TEST_FLAGS ?= -race -count=1 -timeout 10m

.PHONY: all build run test test-go verify verify-gen verify-work verify-modules verify-imports verify-breaking lint generate tools clean bench soak

all: build

## build: bin/backlogd (the server) and bin/backlog (the CLI)
build:
	go build -o bin/backlogd ./services/backlogd/cmd/backlogd
	go build -o bin/backlog ./services/cli/cmd/backlog

## run: every service plus the gateway on 127.0.0.1:8080, stores under ./data.
## For development it creates a vault key-encryption key in ./data once; in
## production keep that key away from the data it protects.
run: build
	@mkdir -p $(DATA_DIR) && chmod 700 $(DATA_DIR)
	@bin/backlogd vault gen-kek -out $(DATA_DIR)/vault.kek
	bin/backlogd -target=all -data-dir $(DATA_DIR) -vault-kek-file $(DATA_DIR)/vault.kek

## test: every module's tests with -race (end-to-end included), then verify.
## Each module is tested on its own (GOWORK=off): its go.mod must stand alone.
test: test-go verify

test-go:
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
verify: verify-work verify-modules verify-imports verify-gen verify-breaking lint

verify-modules:
	@for m in $(MODULES); do \
	  (cd $$m && GOWORK=off go mod tidy -diff >/dev/null) || { echo "$$m: go.mod/go.sum are not tidy on their own: run (cd $$m && GOWORK=off go mod tidy)"; exit 1; }; \
	done; echo "every module's go.mod is tidy on its own"

# Handlers see the storage seam (kit/store), never an engine: only the bbolt
# engine's package may import bbolt.
verify-imports:
	@bad=$$(git grep -l '"go.etcd.io/bbolt"' -- '*.go' ':!gen/' ':!services/kit/store/boltstore/' || true); \
	if [ -n "$$bad" ]; then echo "bbolt imported outside services/kit/store/boltstore:"; echo "$$bad"; exit 1; fi; \
	echo "bbolt is imported only by the bbolt store engine"

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
	(cd $$tmp && ./tools/bin/buf generate); \
	diff -r $$tmp/gen/go gen/go && diff -r $$tmp/gen/openapi gen/openapi \
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

## tools: build buf (pinned in tools/go.mod) and the protoc plugins (pinned in gen/go.mod)
tools: $(TOOLS)

tools/bin/buf: tools/go.mod
	GOWORK=off go build -C tools -o bin/buf github.com/bufbuild/buf/cmd/buf

tools/bin/protoc-gen-go: gen/go.mod
	GOWORK=off go build -C gen -o ../tools/bin/ google.golang.org/protobuf/cmd/protoc-gen-go
tools/bin/protoc-gen-go-grpc: gen/go.mod
	GOWORK=off go build -C gen -o ../tools/bin/ google.golang.org/grpc/cmd/protoc-gen-go-grpc
tools/bin/protoc-gen-grpc-gateway: gen/go.mod
	GOWORK=off go build -C gen -o ../tools/bin/ github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway
tools/bin/protoc-gen-openapiv2: gen/go.mod
	GOWORK=off go build -C gen -o ../tools/bin/ github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2

clean:
	rm -rf bin tools/bin
