# Shared by scripts/bench-edge, bench-keys-api and bench-waf (sourced, not
# run): installing what a benchmark needs from Debian, the release binary,
# free loopback ports and a throwaway certificate.

# bench_install PKG... : installs the Debian packages named (as root, or
# through sudo), quietly unless the first attempt fails.
bench_install() {
    (($#)) || return 0
    local sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    echo "$(basename "$0"): installing $*" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 || {
        "${sudo_cmd[@]}" apt-get update -qq
        "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@"
    }
}

# bench_release_bin : builds the release `rampart` and prints its path, or
# prints $RAMPART_BENCH_BIN when set (a binary built elsewhere, to compare
# two builds on the same load).
bench_release_bin() {
    if [ -n "${RAMPART_BENCH_BIN:-}" ]; then
        echo "$RAMPART_BENCH_BIN"
        return
    fi
    cargo build --release -q -p rampart
    local target="${CARGO_TARGET_DIR:-target}"
    case "$target" in
        /*) echo "$target/release/rampart" ;;
        *) echo "$PWD/$target/release/rampart" ;;
    esac
}

# free_port : a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_cert KEY CERT CN SAN : a self-signed ECDSA P-256 certificate, valid
# for 30 days so that the edge's warning about certificates that expire
# within 14 days does not show in every benchmark's output (the files live
# only as long as the run's temporary directory).
bench_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=$3" -addext "subjectAltName=$4" -keyout "$1" -out "$2" 2>/dev/null
}

# waf_rule_files DIR TMPDIR : writes into DIR the engine settings and the
# paranoia-level-1 SecAction that scripts/bench-waf loads around Debian's
# CRS 3.3.4, and sets the array waf_rules to every rule file in load order
# (what both ModSecurity and Rampart's edge load there).
waf_rule_files() {
    mkdir -p "$1" "$2"
    local crs_setup=/etc/modsecurity/crs/crs-setup.conf f
    # ModSecurity's recommended settings that can change a verdict.
    cat > "$1/engine.conf" <<CONF
SecRuleEngine On
SecRequestBodyAccess On
SecRule REQUEST_HEADERS:Content-Type "@rx ^(?:application(?:/soap\+|/)|text/)xml" \
    "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/json" \
    "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRequestBodyLimit 13107200
SecRequestBodyNoFilesLimit 131072
SecRequestBodyLimitAction Reject
SecArgumentsLimit 1000
SecRule REQBODY_ERROR "!@eq 0" \
    "id:200002,phase:2,t:none,log,deny,status:400,msg:'Failed to parse request body.'"
SecRule MULTIPART_STRICT_ERROR "!@eq 0" \
    "id:200003,phase:2,t:none,log,deny,status:400,msg:'Multipart request body failed strict validation'"
SecResponseBodyAccess Off
SecAuditEngine Off
SecTmpDir $2
SecDataDir $2
CONF
    cat > "$1/paranoia.conf" <<'CONF'
SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level=1"
CONF
    waf_rules=("$1/engine.conf" "$crs_setup" "$1/paranoia.conf")
    [ -f /etc/modsecurity/crs/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf ] &&
        waf_rules+=(/etc/modsecurity/crs/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf)
    while IFS= read -r f; do waf_rules+=("$f"); done < <(ls /usr/share/modsecurity-crs/rules/*.conf | LC_ALL=C sort)
    [ -f /etc/modsecurity/crs/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf ] &&
        waf_rules+=(/etc/modsecurity/crs/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf)
}

# waf_requests : sets waf_browser and waf_reqs, the mixed load of
# scripts/bench-waf: each request as method|path|content type|body|user
# agent ("-" for none), benign requests first, then attacks.
waf_requests() {
    local form=application/x-www-form-urlencoded json=application/json
    waf_browser="Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
    waf_reqs=(
        "GET|/|-|-|$waf_browser"
        "GET|/index.html?q=hello+world&page=2|-|-|$waf_browser"
        "GET|/products?category=books&sort=price&order=asc|-|-|$waf_browser"
        "GET|/search?q=union+station+opening+hours|-|-|$waf_browser"
        "GET|/static/app.js?v=1.2.3|-|-|$waf_browser"
        "GET|/blog/2024/05/hello-world|-|-|$waf_browser"
        "GET|/account/orders?from=2024-01-01&to=2024-12-31|-|-|$waf_browser"
        "POST|/login|$form|user=alice&password=s3cret%21ok|$waf_browser"
        "POST|/api/items|$json|{\"name\":\"chair\",\"qty\":2,\"tags\":[\"a\",\"b\"]}|$waf_browser"
        "POST|/comment|$form|text=Nice+article%2C+thanks%21&name=Bob|$waf_browser"
        "GET|/?id=1%27%20OR%201=1--|-|-|$waf_browser"
        "GET|/item?id=-1%20UNION%20SELECT%20username,password%20FROM%20users|-|-|$waf_browser"
        "GET|/?q=%3Cscript%3Ealert(1)%3C/script%3E|-|-|$waf_browser"
        "POST|/comment|$form|text=%3Cimg%20src=x%20onerror=alert(1)%3E|$waf_browser"
        "GET|/?file=../../../../etc/passwd|-|-|$waf_browser"
        "GET|/?cmd=;cat%20/etc/passwd|-|-|$waf_browser"
        "GET|/|-|-|sqlmap/1.7.2#stable (https://sqlmap.org)"
        "POST|/api/items|$json|{\"q\":\"1' or '1'='1\"}|$waf_browser"
    )
}

# waf_mixed_lua HOST FILE : writes the wrk script that sends waf_reqs in
# rotation with Host HOST and counts the answers' statuses (200, 403, other).
waf_mixed_lua() {
    local spec method path ctype body ua hdrs
    lua_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
    {
        echo 'local reqs = {}'
        for spec in "${waf_reqs[@]}"; do
            IFS='|' read -r method path ctype body ua <<< "$spec"
            hdrs="[\"Host\"]=\"$1\", [\"Accept\"]=\"text/html,application/json;q=0.9,*/*;q=0.8\", [\"Accept-Language\"]=\"en-GB,en;q=0.8\""
            [ "$ua" = "-" ] || hdrs+=", [\"User-Agent\"]=$(lua_str "$ua")"
            if [ "$ctype" = "-" ]; then
                echo "reqs[#reqs+1] = wrk.format(\"$method\", $(lua_str "$path"), {$hdrs}, nil)"
            else
                hdrs+=", [\"Content-Type\"]=\"$ctype\""
                echo "reqs[#reqs+1] = wrk.format(\"$method\", $(lua_str "$path"), {$hdrs}, $(lua_str "$body"))"
            fi
        done
        cat <<'LUA'
local i = 0
request = function()
    i = i % #reqs + 1
    return reqs[i]
end
-- Statuses counted per thread, added up at the end.
ok_n, blocked_n, other_n = 0, 0, 0
response = function(status, headers, body)
    if status == 200 then ok_n = ok_n + 1
    elseif status == 403 then blocked_n = blocked_n + 1
    else other_n = other_n + 1 end
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
    local ok, blocked, other = 0, 0, 0
    for _, t in ipairs(threads) do
        ok = ok + t:get("ok_n"); blocked = blocked + t:get("blocked_n"); other = other + t:get("other_n")
    end
    io.write(string.format("statuses: %d %d %d\n", ok, blocked, other))
end
LUA
    } > "$2"
}
