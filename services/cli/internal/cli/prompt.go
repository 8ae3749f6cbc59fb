package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

const maxValueBytes = 1 << 20

// readToken gets a credential: arg itself, or when arg is "-" or absent, the
// first line of stdin (piped) or a hidden prompt (terminal).
func (a *app) readToken(args []string) (string, error) {
	if len(args) == 1 && args[0] != "-" {
		return strings.TrimSpace(args[0]), nil
	}
	if a.env.StdinIsTerminal() {
		s, err := a.env.ReadSecret("Paste the credential (input is hidden): ")
		if err != nil {
			return "", fmt.Errorf("read credential: %w", err)
		}
		return strings.TrimSpace(s), nil
	}
	b, err := io.ReadAll(io.LimitReader(a.env.Stdin, 64<<10))
	if err != nil {
		return "", fmt.Errorf("read credential from stdin: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	return s, nil
}

// readValue gets a secret value: all of stdin when it is piped (less one
// trailing newline), else a hidden prompt. Never from a flag, so values stay
// out of shell history and process lists.
func (a *app) readValue(name string) (string, error) {
	var v string
	if a.env.StdinIsTerminal() {
		s, err := a.env.ReadSecret(fmt.Sprintf("Value of secret %s (input is hidden): ", name))
		if err != nil {
			return "", fmt.Errorf("read secret value: %w", err)
		}
		v = strings.TrimRight(s, "\r\n")
	} else {
		b, err := io.ReadAll(io.LimitReader(a.env.Stdin, maxValueBytes+1))
		if err != nil {
			return "", fmt.Errorf("read secret value from stdin: %w", err)
		}
		if len(b) > maxValueBytes {
			return "", fmt.Errorf("secret value on stdin is larger than %d bytes", maxValueBytes)
		}
		v = string(b)
		v = strings.TrimSuffix(v, "\n")
		v = strings.TrimSuffix(v, "\r")
	}
	if v == "" {
		return "", errors.New("empty secret value: pipe it on stdin (printf '%s' \"$VALUE\" | backlog secrets …) or type it at the prompt")
	}
	return v, nil
}
