package deploycheck

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// copyTree copies what Check reads from the repository into a temp dir.
func copyTree(t *testing.T) string {
	t.Helper()
	src, dst := repoRoot(t), t.TempDir()
	for _, dir := range []string{"deploy", "docs"} {
		err := filepath.WalkDir(filepath.Join(src, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(src, path)
			if d.IsDir() {
				return os.MkdirAll(filepath.Join(dst, rel), 0o755)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(filepath.Join(src, "go.work"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "go.work"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dst, "services", "backlogd", "cmd", "backlogd"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestMutations breaks the deploy files one way at a time and expects the
// check to say so: a check that finds nothing proves nothing.
func TestMutations(t *testing.T) {
	base := Check(repoRoot(t)).Problems
	const (
		cred    = "deploy/kubernetes/base/credential/statefulset.yaml"
		auto    = "deploy/kubernetes/base/automation/statefulset.yaml"
		vaultSS = "deploy/kubernetes/base/vault/statefulset.yaml"
		gw      = "deploy/kubernetes/base/gateway/deployment.yaml"
		aio     = "deploy/kubernetes/overlays/all-in-one/statefulset.yaml"
		unit    = "deploy/systemd/backlogd.service"
	)
	cases := []struct {
		name, file, old, new, want string
	}{
		{"unknown field", cred, "  replicas: 1\n", "  replicas: 1\n  replicaz: 1\n", `unknown field "replicaz"`},
		{"wrong type", cred, "containerPort: 9101", `containerPort: "ninety"`, "cannot unmarshal"},
		{"unknown kind", "deploy/kubernetes/base/agent/service.yaml", "kind: Service", "kind: Servize", "not a kind deploycheck knows"},
		{"bad target", cred, "- -target=credential", "- -target=credentail", `unknown target "credentail"`},
		{"undefined flag", cred, "- -target=credential\n", "- -target=credential\n            - -listen=0.0.0.0:1\n", "flag provided but not defined: -listen"},
		{"two-word flag", cred, "- -target=credential\n", "- -target\n            - credential\n", `argument "-target": write every flag as -name=value`},
		{"bad duration", "deploy/kubernetes/overlays/split/kustomization.yaml", "BACKLOG_LOG_LEVEL=info", "BACKLOG_TOKEN_TTL=forever", `backlogd refuses -token-ttl="forever"`},
		{"unknown env flag", "deploy/kubernetes/overlays/split/kustomization.yaml", "BACKLOG_LOG_LEVEL=info", "BACKLOG_LOG_LEVL=info", "no backlogd flag -log-levl"},
		{"port mismatch", cred, "containerPort: 9101", "containerPort: 9111", "-credential-listen-addr=0.0.0.0:9101: no containerPort 9101"},
		{"loopback listener", cred, "-credential-listen-addr=0.0.0.0:9101", "-credential-listen-addr=127.0.0.1:9101", "listens on 127.0.0.1 only"},
		{"no listen flag", cred, "            - -credential-listen-addr=0.0.0.0:9101\n", "", "listens on backlog-credential only"},
		{"grpc probe port", cred, "            port: 9101\n            periodSeconds: 5", "            port: 9102\n            periodSeconds: 5", "gRPC probe on port 9102"},
		{"liveness on readyz", gw, "path: /healthz", "path: /readyz", "/readyz fails while a service is down"},
		{"data dir off the volume", auto, "- -data-dir=/var/lib/backlog", "- -data-dir=/var/lib/backlog/x", "-data-dir=/var/lib/backlog/x is not the mountPath of a volumeClaimTemplate"},
		{"undeclared mount", cred, "            - name: service-token\n              mountPath", "            - name: service-tokn\n              mountPath", "mounts service-tokn, which is neither a volume nor a volumeClaimTemplate"},
		{"token off the secret", cred, "-service-token-file=/etc/backlog/service-token/service-token", "-service-token-file=/etc/backlog/token", "/etc/backlog/token is on no volume"},
		{"token not projected", cred, "                path: service-token", "                path: token", "projects no item at service-token"},
		{"default token file", cred, "            - -service-token-file=/etc/backlog/service-token/service-token\n", "", "set -service-token-file to the shared Secret"},
		{"two tokens", auto, "secretName: backlog-service-token", "secretName: backlog-service-token-2", "the processes use different service tokens"},
		{"kek for no vault", cred, "            - -service-token-file=/etc/backlog/service-token/service-token\n", "            - -service-token-file=/etc/backlog/service-token/service-token\n            - -vault-kek-file=/etc/backlog/service-token/service-token\n", "-vault-kek-file given to a process that does not run the vault"},
		{"vault without kek", vaultSS, "            - -vault-kek-file=/etc/backlog/vault-kek/kek\n", "", "the vault runs without -vault-kek-file"},
		{"loose secret mode", cred, "defaultMode: 0400", "defaultMode: 0440", "set defaultMode: 0400"},
		{"root", cred, "runAsNonRoot: true", "runAsNonRoot: false", "set runAsNonRoot: true"},
		{"writable root", cred, "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "set readOnlyRootFilesystem: true"},
		{"service links", cred, "enableServiceLinks: false", "enableServiceLinks: true", "set enableServiceLinks: false"},
		{"no limits", gw, "            limits:\n              cpu: \"1\"\n              memory: 256Mi\n", "", "set both a request and a limit for cpu"},
		{"two writers", vaultSS, "  replicas: 1", "  replicas: 2", "replicas must be exactly 1"},
		{"single gateway", gw, "  replicas: 2", "  replicas: 1", "run at least 2 gateway replicas"},
		{"selector mismatch", "deploy/kubernetes/base/credential/service.yaml", "    app.kubernetes.io/component: credential\n  ports", "    app.kubernetes.io/component: credentail\n  ports", "Service backlog-credential leads to no pod running credential"},
		{"wrong service name", gw, "backlog-vault:9104", "backlog-vaults:9104", "no Service backlog-vaults"},
		{"wrong service port", gw, "backlog-agent:9103", "backlog-agent:9104", "Service backlog-agent has no port 9104"},
		{"dial own loopback", gw, "-agent-addr=backlog-agent:9103", "-agent-addr=127.0.0.1:9103", "this pod does not run agent"},
		{"target port", "deploy/kubernetes/base/agent/service.yaml", "targetPort: grpc", "targetPort: grpcx", "has no containerPort grpcx"},
		{"policy port", "deploy/kubernetes/base/agent/networkpolicy.yaml", "- port: grpc", "- port: grpcx", "port grpcx is not a port of"},
		{"policy blocks the gateway", vaultSS[:len(vaultSS)-len("statefulset.yaml")] + "networkpolicy.yaml", "                  - gateway\n", "", "no NetworkPolicy lets deploy/kubernetes/overlays/split (rendered): Deployment/backlog-gateway reach"},
		{"policy typo", "deploy/kubernetes/base/agent/networkpolicy.yaml", "                  - backup\n", "                  - backpu\n", `component "backpu" is no component`},
		{"metrics open", "deploy/kubernetes/base/gateway/networkpolicy.yaml", "        - port: http\n", "        - port: http\n        - port: metrics\n", "opens a gRPC or metrics port to every peer"},
		{"unlisted file", "deploy/kubernetes/base/agent/kustomization.yaml", "  - networkpolicy.yaml\n", "", "does not list networkpolicy.yaml"},
		{"missing resource", "deploy/kubernetes/base/agent/kustomization.yaml", "  - service.yaml\n", "  - service.yaml\n  - missing.yaml\n", "resource missing.yaml does not exist"},
		{"unused base", "deploy/kubernetes/overlays/split/kustomization.yaml", "  - ../../base/agent\n", "", "no overlay uses this base"},
		{"all-in-one probe", aio, "path: /readyz", "path: /ready", `path "/ready": the gateway answers /healthz and /readyz`},
		{"all-in-one port", aio, "name: grpc-vault\n              containerPort: 9104", "name: grpc-vault\n              containerPort: 9105", "no containerPort 9104"},
		{"unit flag", unit, "backlogd -target=all", "backlogd -target=al", `unknown target "al"`},
		{"unit data dir", unit, "-data-dir=/var/lib/backlog", "-data-dir=/srv/backlog", "is not the StateDirectory /var/lib/backlog"},
		{"unit hardening", unit, "ProtectSystem=strict", "ProtectSystem=full", "want ProtectSystem=strict"},
		{"unit kek", unit, "LoadCredential=vault-kek:/etc/backlog/vault-kek\n", "", "is not a LoadCredential= of the unit"},
		{"env example", "deploy/systemd/backlogd.env.example", "#BACKLOG_TOKEN_TTL=1h", "#BACKLOG_TOKEN_TL=1h", "no backlogd flag -token-tl"},
		{"template instance", "deploy/systemd/backlogd@.service", "-target=%i", "-target=%i,gateway", "want [credential]"},
		{"vault drop-in", "deploy/systemd/backlogd@vault.service.d/vault-kek.conf", "Environment=BACKLOG_VAULT_KEK_FILE=%d/vault-kek\n", "", "runs the vault without a key-encryption key"},
		{"docker user", "deploy/docker/Dockerfile", "USER 65532:65532", "USER 1000", "runAsUser 65532, but the image's USER is 1000"},
		{"docker expose", "deploy/docker/Dockerfile", "EXPOSE 8080 9100", "EXPOSE 9100", "EXPOSE misses 8080"},
		{"docker go", "deploy/docker/Dockerfile", "ARG GO_VERSION=1.26", "ARG GO_VERSION=1.24", "go.work wants Go"},
		{"docs flag", "docs/operations.md", "| `-token-ttl` |", "| token ttl |", "does not document the flag `-token-ttl`"},
		{"docs command", "docs/operations.md", "bin/backlogd restore -from=/backups/2026-11-22", "bin/backlogd restore -form=/backups/2026-11-22", "-from PATH is required"},
		{"docs subcommand flag", "docs/operations.md", "bin/backlogd service-token create -out=./service-token", "bin/backlogd service-token create -oot=./service-token", "backlogd service-token create takes no -oot"},
		{"docs unknown subcommand", "docs/operations.md", "bin/backlogd service-token create -out=./service-token", "bin/backlogd service-tokens create -out=./service-token", `backlogd has no subcommand "service-tokens create"`},
		{"docs job", "docs/operations.md", "            - -out=/backups/latest\n", "            - -out=/tmp/latest\n", "-out=/tmp/latest is not on a writable volume"},
	}
	// Edits a case needs beyond its own: a base both overlays use is unused
	// only once neither does.
	also := map[string][][3]string{
		"unused base": {{"deploy/kubernetes/overlays/ha/kustomization.yaml", "  - ../../base/agent\n", ""}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			root := copyTree(t)
			for _, e := range also[c.name] {
				p := filepath.Join(root, e[0])
				b, err := os.ReadFile(p)
				if err != nil || !strings.Contains(string(b), e[1]) {
					t.Fatalf("%s does not contain %q (%v): update the test", e[0], e[1], err)
				}
				if err := os.WriteFile(p, []byte(strings.Replace(string(b), e[1], e[2], 1)), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			path := filepath.Join(root, c.file)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), c.old) {
				t.Fatalf("%s does not contain %q: update the test", c.file, c.old)
			}
			if err := os.WriteFile(path, []byte(strings.Replace(string(b), c.old, c.new, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			var found []string
			for _, p := range Check(root).Problems {
				if !contains(base, p) {
					found = append(found, p)
				}
			}
			for _, p := range found {
				if strings.Contains(p, c.want) {
					return
				}
			}
			t.Errorf("no new problem says %q; new problems:\n%s", c.want, strings.Join(found, "\n"))
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestFlagNames reads backlogd's flags from its parser.
func TestFlagNames(t *testing.T) {
	names, err := FlagNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"target", "data-dir", "credential-addr", "credential-listen-addr", "service-token-file", "vault-kek-file"} {
		if !contains(names, want) {
			t.Errorf("FlagNames misses %s: %v", want, names)
		}
	}
}

// TestKEKFileModes pins what the vault accepts against what Kubernetes and
// systemd hand it: 0400 from a systemd credential; 0440 from a Secret
// volume in a pod with an fsGroup.
func TestKEKFileModes(t *testing.T) {
	if err := KEKFileAccepted(0o400); err != nil {
		t.Errorf("0400: %v", err)
	}
	if err := KEKFileAccepted(0o644); err == nil {
		t.Error("the vault accepts a world-readable key-encryption key")
	}
}

// TestExpandVars follows the kubelet's $(VAR) rules.
func TestExpandVars(t *testing.T) {
	env := map[string]string{"POD_IP": "10.1.2.3"}
	if got, missing := expandVars("-x=$(POD_IP):1 $$(POD_IP) $(NOPE)", env); got != "-x=10.1.2.3:1 $(POD_IP) $(NOPE)" || len(missing) != 1 || missing[0] != "NOPE" {
		t.Errorf("got %q, missing %v", got, missing)
	}
}

// TestParseUnit reads sections, repeats, empty values and continuations.
func TestParseUnit(t *testing.T) {
	u, err := ParseUnit("# c\n[Service]\nA=1\nA=2\nB=\nExecStart=/bin/x \\\n  -y=1\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := u["Service"]["A"]; len(got) != 2 || got[1] != "2" {
		t.Errorf("A = %v", got)
	}
	if v, ok := u.last("Service", "B"); !ok || v != "" {
		t.Errorf("B = %q %v", v, ok)
	}
	if v, _ := u.last("Service", "ExecStart"); strings.Join(strings.Fields(v), " ") != "/bin/x -y=1" {
		t.Errorf("ExecStart = %q", v)
	}
	if _, err := ParseUnit("A=1\n"); err == nil {
		t.Error("a key outside a section")
	}
}
