package issues_test

import (
	"log"
	"net/http"
	"os"

	"github.com/backlog/controlplane/services/sdk"
	"github.com/backlog/controlplane/services/sdk/example/issues"
)

// The whole service: verify callers through the credential service, serve
// the issues routes.
func Example() {
	v, err := sdk.NewVerifier([]string{os.Getenv("BACKLOG_CREDENTIAL_ADDRS")},
		sdk.WithServiceTokenFile(os.Getenv("BACKLOG_SERVICE_TOKEN_FILE")))
	if err != nil {
		log.Fatal(err)
	}
	defer v.Close()
	log.Fatal(http.ListenAndServe("127.0.0.1:8090", issues.Handler(v)))
}
