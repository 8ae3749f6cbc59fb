module github.com/backlog/controlplane/services/cli

go 1.26.0

replace (
	github.com/backlog/controlplane/gen => ../../gen
	github.com/backlog/controlplane/services/kit => ../kit
)

require (
	github.com/backlog/controlplane/services/kit v0.0.0-00010101000000-000000000000
	github.com/spf13/cobra v1.10.2
	github.com/zalando/go-keyring v0.2.8
	golang.org/x/term v0.47.0
)

require (
	github.com/danieljoos/wincred v1.2.3 // indirect
	github.com/godbus/dbus/v5 v5.2.2 // indirect
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/spf13/pflag v1.0.10 // indirect
	golang.org/x/sys v0.49.0 // indirect
)
