// Package gen holds the code generated from proto/ and the merged OpenAPI document.
package gen

import _ "embed"

// OpenAPI is the merged OpenAPI (Swagger 2.0) document for every REST route.
//
//go:embed openapi/backlog.swagger.json
var OpenAPI []byte
