{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "session-events-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. When the release name already contains the chart name it is used as is.
*/}}
{{- define "session-events-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "session-events-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable across upgrades, so never add version labels here.
*/}}
{{- define "session-events-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "session-events-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "session-events-gateway.labels" -}}
helm.sh/chart: {{ include "session-events-gateway.chart" . }}
{{ include "session-events-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | toString | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: session-events-gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Name of the ServiceAccount to use.
*/}}
{{- define "session-events-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "session-events-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository:tag, or repository@digest when a digest is given.
*/}}
{{- define "session-events-gateway.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Whether a value counts as "set": not null, not "", not an empty list or map.
Numbers and booleans (including 0 and false) count as set.
Usage: {{ if eq (include "session-events-gateway.isSet" $v) "true" }}
*/}}
{{- define "session-events-gateway.isSet" -}}
{{- $v := . -}}
{{- if kindIs "invalid" $v -}}
false
{{- else if kindIs "string" $v -}}
{{- ne $v "" -}}
{{- else if or (kindIs "slice" $v) (kindIs "map" $v) -}}
{{- gt (len $v) 0 -}}
{{- else -}}
true
{{- end -}}
{{- end }}

{{/*
Renders a value as an environment-variable string: lists are joined with commas, whole numbers
lose the float formatting YAML parsing gives them (1000000, not 1e+06).
*/}}
{{- define "session-events-gateway.envString" -}}
{{- $v := . -}}
{{- if kindIs "slice" $v -}}
{{- join "," $v -}}
{{- else if and (kindIs "float64" $v) (eq $v (float64 (int64 $v))) -}}
{{- int64 $v -}}
{{- else -}}
{{- toString $v -}}
{{- end -}}
{{- end }}

{{/*
Name of the internal Service (internal port: probes' endpoints, /metrics, /docs).
*/}}
{{- define "session-events-gateway.internalServiceName" -}}
{{- printf "%s-internal" (include "session-events-gateway.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/*
Directory the Kafka TLS Secret is mounted at.
*/}}
{{- define "session-events-gateway.kafkaTlsDir" -}}
/etc/gateway/kafka-tls
{{- end }}

{{/*
Directory the record mapping's ConfigMap is mounted at.
*/}}
{{- define "session-events-gateway.recordMappingDir" -}}
/etc/gateway/record-mapping
{{- end }}

{{/*
Name of the ConfigMap holding the record mapping: records.mapping.existingConfigMap, else the chart's
own when records.mapping.json is set, else "" (no mapping).
*/}}
{{- define "session-events-gateway.recordMappingConfigMap" -}}
{{- $mapping := .Values.records.mapping -}}
{{- if $mapping.existingConfigMap -}}
{{- $mapping.existingConfigMap -}}
{{- else if $mapping.json -}}
{{- printf "%s-record-mapping" (include "session-events-gateway.fullname" . | trunc 48 | trimSuffix "-") -}}
{{- end -}}
{{- end }}

{{/*
Key of the mapping file in its ConfigMap.
*/}}
{{- define "session-events-gateway.recordMappingKey" -}}
{{- if .Values.records.mapping.existingConfigMap -}}
{{- .Values.records.mapping.key -}}
{{- else -}}
mapping.json
{{- end -}}
{{- end }}

{{/*
Plain GATEWAY_* settings as a name -> value map, only the ones that are set. They go into the
ConfigMap. Secrets and the downward-API instance id are rendered in the Deployment instead.
*/}}
{{- define "session-events-gateway.configEnv" -}}
{{- $v := .Values -}}
{{- $tlsDir := include "session-events-gateway.kafkaTlsDir" . -}}
{{- $pairs := list
  (list "GATEWAY_KAFKA_BOOTSTRAP_SERVERS" $v.kafka.bootstrapServers)
  (list "GATEWAY_KAFKA_TOPIC" $v.kafka.topic)
  (list "GATEWAY_KAFKA_CLIENT_ID" $v.kafka.clientId)
  (list "GATEWAY_KAFKA_SECURITY_PROTOCOL" $v.kafka.securityProtocol)
  (list "GATEWAY_KAFKA_REQUEST_TIMEOUT_MS" $v.kafka.requestTimeoutMs)
  (list "GATEWAY_KAFKA_HEALTH_INTERVAL" $v.kafka.healthInterval)
  (list "GATEWAY_KAFKA_MAX_FETCH_BYTES" $v.kafka.maxFetchBytes)
  (list "GATEWAY_JWKS_URL" $v.auth.jwksUrl)
  (list "GATEWAY_OIDC_ISSUER" $v.auth.oidcIssuer)
  (list "GATEWAY_JWT_ISSUER" $v.auth.issuer)
  (list "GATEWAY_JWT_AUDIENCE" $v.auth.audience)
  (list "GATEWAY_JWT_ALGORITHMS" $v.auth.algorithms)
  (list "GATEWAY_TENANT_CLAIM" $v.auth.tenantClaim)
  (list "GATEWAY_SESSION_CLAIM" $v.auth.sessionClaim)
  (list "GATEWAY_REQUIRED_SCOPE" $v.auth.requiredScope)
  (list "GATEWAY_TOKEN_COOKIE" $v.auth.tokenCookie)
  (list "GATEWAY_ALLOW_QUERY_TOKENS" $v.auth.allowQueryTokens)
  (list "GATEWAY_CORS_ORIGINS" $v.corsOrigins)
  (list "GATEWAY_REPLAY_WINDOW" $v.replayWindow)
  (list "GATEWAY_TERMINAL_RETENTION" $v.store.terminalRetention)
  (list "GATEWAY_SESSION_TTL" $v.store.sessionTtl)
  (list "GATEWAY_MAX_SESSIONS" $v.store.maxSessions)
  (list "GATEWAY_MAX_RECORD_BYTES" $v.store.maxRecordBytes)
  (list "GATEWAY_STORE_EVICTION_INTERVAL" $v.store.evictionInterval)
  (list "GATEWAY_MAX_CONNECTIONS" $v.limits.maxConnections)
  (list "GATEWAY_MAX_CONNECTIONS_PER_SUBJECT" $v.limits.maxConnectionsPerSubject)
  (list "GATEWAY_MAX_CONNECTIONS_PER_SESSION" $v.limits.maxConnectionsPerSession)
  (list "GATEWAY_HEARTBEAT_INTERVAL" $v.stream.heartbeatInterval)
  (list "GATEWAY_RETRY_MS" $v.stream.retryMs)
  (list "GATEWAY_DRAIN_SECONDS" $v.drainSeconds)
  (list "GATEWAY_SHUTDOWN_GRACE_SECONDS" $v.shutdownGraceSeconds)
  (list "GATEWAY_LOG_LEVEL" $v.logLevel)
  (list "GATEWAY_LOG_FORMAT" $v.logFormat)
  (list "GATEWAY_ACCESS_LOG" $v.accessLog)
  (list "GATEWAY_INTERNAL_HOST" "0.0.0.0")
  (list "GATEWAY_INTERNAL_PORT" $v.internalPort)
  (list "GATEWAY_WORKERS" $v.workers)
  (list "GATEWAY_READINESS_STRICT" $v.health.readinessStrict)
  (list "GATEWAY_TASK_CRASH_LIMIT" $v.health.taskCrashLimit)
  (list "GATEWAY_TASK_CRASH_WINDOW" $v.health.taskCrashWindow)
  (list "GATEWAY_CLOUDEVENTS_TYPES" $v.records.cloudeventsTypes)
  (list "GATEWAY_DLQ_TOPIC" $v.deadLetter.topic)
  (list "GATEWAY_DLQ_WRITER" $v.deadLetter.writer)
  (list "GATEWAY_ROOT_PATH" $v.rootPath)
-}}
{{- with $v.auth.issuers }}
{{- /* A YAML list in the values file, the JSON list the app reads. */}}
{{- $pairs = append $pairs (list "GATEWAY_JWT_ISSUERS" (toJson .)) }}
{{- end }}
{{- if include "session-events-gateway.recordMappingConfigMap" . }}
{{- $pairs = append $pairs (list "GATEWAY_RECORD_MAPPING" (printf "%s/%s" (include "session-events-gateway.recordMappingDir" .) (include "session-events-gateway.recordMappingKey" .))) }}
{{- end }}
{{- if eq (include "session-events-gateway.saslEnabled" .) "true" }}
{{- $pairs = append $pairs (list "GATEWAY_KAFKA_SASL_MECHANISM" $v.kafka.sasl.mechanism) }}
{{- if not $v.kafka.sasl.usernameKey }}
{{- $pairs = append $pairs (list "GATEWAY_KAFKA_SASL_USERNAME" $v.kafka.sasl.username) }}
{{- end }}
{{- end }}
{{- if eq (include "session-events-gateway.sslEnabled" .) "true" }}
{{- $pairs = append $pairs (list "GATEWAY_KAFKA_SSL_CHECK_HOSTNAME" $v.kafka.tls.checkHostname) }}
{{- if $v.kafka.tls.existingSecret }}
{{- with $v.kafka.tls.caKey }}
{{- $pairs = append $pairs (list "GATEWAY_KAFKA_SSL_CAFILE" (printf "%s/%s" $tlsDir .)) }}
{{- end }}
{{- with $v.kafka.tls.certKey }}
{{- $pairs = append $pairs (list "GATEWAY_KAFKA_SSL_CERTFILE" (printf "%s/%s" $tlsDir .)) }}
{{- end }}
{{- with $v.kafka.tls.keyKey }}
{{- $pairs = append $pairs (list "GATEWAY_KAFKA_SSL_KEYFILE" (printf "%s/%s" $tlsDir .)) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $pairs }}
{{- $value := index . 1 }}
{{- if eq (include "session-events-gateway.isSet" $value) "true" }}
{{ index . 0 }}: {{ include "session-events-gateway.envString" $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"true" when the security protocol is SASL_PLAINTEXT or SASL_SSL.
*/}}
{{- define "session-events-gateway.saslEnabled" -}}
{{- hasPrefix "SASL_" (.Values.kafka.securityProtocol | default "PLAINTEXT") -}}
{{- end }}

{{/*
"true" when the security protocol is SSL or SASL_SSL.
*/}}
{{- define "session-events-gateway.sslEnabled" -}}
{{- has (.Values.kafka.securityProtocol | default "PLAINTEXT") (list "SSL" "SASL_SSL") -}}
{{- end }}

{{/*
terminationGracePeriodSeconds: preStop sleep + drain + uvicorn shutdown + margin, or the explicit
value (which must cover the first three).
*/}}
{{- define "session-events-gateway.terminationGracePeriodSeconds" -}}
{{- $busy := add (int .Values.preStop.sleepSeconds) (int .Values.drainSeconds) (int .Values.shutdownGraceSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $busy (int .Values.terminationGraceExtraSeconds) }}
{{- else }}
{{- $explicit := int .Values.terminationGracePeriodSeconds }}
{{- if le $explicit $busy }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStop.sleepSeconds + drainSeconds + shutdownGraceSeconds (%d), or streams are cut off by SIGKILL mid-drain" $explicit $busy) }}
{{- end }}
{{- $explicit }}
{{- end }}
{{- end }}

{{/*
Checks values that a JSON schema cannot express; fails the render with a clear message.
*/}}
{{- define "session-events-gateway.validate" -}}
{{- $kafka := .Values.kafka }}
{{- /* Without these the app cannot work: refuse to render rather than deploy a crash loop. */}}
{{- $_ := required "kafka.bootstrapServers is required: the Kafka brokers' host:port list, e.g. --set 'kafka.bootstrapServers=kafka-0.kafka:9092\\,kafka-1.kafka:9092'" $kafka.bootstrapServers }}
{{- if not (or .Values.auth.jwksUrl .Values.auth.oidcIssuer .Values.auth.issuers) }}
{{- fail "auth.jwksUrl or auth.oidcIssuer is required (or auth.issuers for several): the gateway verifies every stream's token and exits at start without signing keys, e.g. --set auth.oidcIssuer=https://idp.example.com/realms/wallet" }}
{{- end }}
{{- if and .Values.auth.issuers (or .Values.auth.jwksUrl .Values.auth.oidcIssuer .Values.auth.issuer) }}
{{- fail "auth.issuers replaces auth.jwksUrl, auth.oidcIssuer and auth.issuer: set either the list or those" }}
{{- end }}
{{- if eq (int .Values.internalPort) (int .Values.containerPort) }}
{{- fail (printf "internalPort and containerPort must differ (both are %d): the internal endpoints (/readyz, /metrics, /docs) must not be reachable through the public Service" (int .Values.containerPort)) }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.internalService.enabled) }}
{{- fail "serviceMonitor.enabled needs internalService.enabled: the ServiceMonitor scrapes the internal port through the internal Service" }}
{{- end }}
{{- if eq (include "session-events-gateway.saslEnabled" .) "true" }}
{{- if not $kafka.sasl.existingSecret }}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.existingSecret (a Secret holding the SASL password)" $kafka.securityProtocol) }}
{{- end }}
{{- if and (not $kafka.sasl.username) (not $kafka.sasl.usernameKey) }}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.username or kafka.sasl.usernameKey" $kafka.securityProtocol) }}
{{- end }}
{{- end }}
{{- if and $kafka.tls.existingSecret (ne (include "session-events-gateway.sslEnabled" .) "true") }}
{{- fail "kafka.tls.existingSecret is set but kafka.securityProtocol is neither SSL nor SASL_SSL" }}
{{- end }}
{{- if and $kafka.tls.existingSecret (not (or $kafka.tls.caKey $kafka.tls.certKey)) }}
{{- fail "kafka.tls.existingSecret is set but names no file: set kafka.tls.caKey and/or kafka.tls.certKey + kafka.tls.keyKey" }}
{{- end }}
{{- if ne (empty $kafka.tls.certKey) (empty $kafka.tls.keyKey) }}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey go together (client certificate and its key)" }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if eq (upper (toString .name)) "GATEWAY_DEV_MODE" }}
{{- fail "GATEWAY_DEV_MODE cannot be set through this chart: development mode is not for clusters" }}
{{- end }}
{{- end }}
{{- end }}
