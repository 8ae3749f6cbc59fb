package deploycheck

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHAMutations breaks the etcd-mode overlay one way at a time and expects
// the check to say so.
func TestHAMutations(t *testing.T) {
	base := Check(repoRoot(t)).Problems
	const (
		dir   = "deploy/kubernetes/overlays/ha/"
		kust  = dir + "kustomization.yaml"
		cred  = dir + "credential.yaml"
		auto  = dir + "automation.yaml"
		agent = dir + "agent.yaml"
		vault = dir + "vault.yaml"
		pdbs  = dir + "poddisruptionbudgets.yaml"
	)
	cases := []struct {
		name, file, old, new, want string
	}{
		{"one replica", cred, "  replicas: 3\n", "  replicas: 1\n", "run at least 3 replicas of a store-owning service on etcd"},
		{"no anti-affinity", auto, "topologyKey: kubernetes.io/hostname", "topologyKey: topology.kubernetes.io/region", "no podAntiAffinity term on kubernetes.io/hostname"},
		{"anti-affinity on other pods", agent, "                  matchLabels:\n                    app.kubernetes.io/part-of: backlog\n                    app.kubernetes.io/component: agent\n",
			"                  matchLabels:\n                    app.kubernetes.io/part-of: backlog\n                    app.kubernetes.io/component: vault\n", "no podAntiAffinity term on kubernetes.io/hostname"},
		{"no budget", pdbs, "    matchLabels:\n      app.kubernetes.io/part-of: backlog\n      app.kubernetes.io/component: credential\n",
			"    matchLabels:\n      app.kubernetes.io/part-of: backlog\n      app.kubernetes.io/component: credentail\n", "no PodDisruptionBudget selects its pods"},
		{"budget blocks drains", pdbs, "maxUnavailable: 1", "maxUnavailable: 0", "maxUnavailable 0 blocks every node drain"},
		{"no tls", agent, "            - -etcd-ca-file=/etc/backlog/etcd/ca.crt\n", "", "-store=etcd without -etcd-ca-file"},
		{"tls key off the secret", agent, "-etcd-key-file=/etc/backlog/etcd/tls.key", "-etcd-key-file=/etc/backlog/tls.key", "/etc/backlog/tls.key is on no volume"},
		{"tls item missing", vault, "              - key: tls.crt\n                path: tls.crt\n", "", "projects no item at tls.crt"},
		{"two prefixes", vault, "-etcd-prefix=/backlog\n", "-etcd-prefix=/backlog-2\n", "one deployment keeps every store under one prefix"},
		{"credential key per replica", cred, "              mountPath: /var/lib/backlog/credential.key\n", "              mountPath: /var/lib/backlog/credential.keys\n", "need one credential.key"},
		{"audit key per replica", auto, "            - -audit-signing-key-file=/etc/backlog/audit-signing-key/audit-signing.key\n", "", "sign audit digests with a key of their own"},
		{"read-only data dir", cred, "            - name: data\n              mountPath: /var/lib/backlog\n", "            - name: data\n              mountPath: /var/lib/backlog\n              readOnly: true\n", "is not the mountPath of a writable volume"},
		{"bbolt in a Deployment", cred, "            - -store=etcd\n", "", "a Deployment runs a store-owning target"},
		{"base StatefulSet kept", kust, "  - patch: |-\n      $patch: delete\n      apiVersion: apps/v1\n      kind: StatefulSet\n      metadata:\n        name: backlog-credential\n", "", "credential runs in 2 workloads"},
		{"endpoints variable", kust, "BACKLOG_ETCD_ENDPOINTS=", "BACKLOG_ETCD_ENDPOINT=", "no backlogd flag -etcd-endpoint"},
		{"one of a list", auto, "-credential-addr=backlog-credential:9101\n", "-credential-addr=backlog-credential:9101,backlog-credentail:9101\n", "no Service backlog-credentail"},
		{"list without listen", cred, "            - -credential-addr=backlog-credential:9101\n", "            - -credential-addr=backlog-credential:9101,backlog-credential:9101\n", "lists several replicas: give this one its own -credential-listen-addr"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			root := copyTree(t)
			path := filepath.Join(root, c.file)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), c.old) {
				t.Fatalf("%s does not contain %q: update the test", c.file, c.old)
			}
			if c.name == "list without listen" {
				// Drop the replica's own bind address as well.
				b = []byte(strings.Replace(string(b), "            - -credential-listen-addr=0.0.0.0:9101\n", "", 1))
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
