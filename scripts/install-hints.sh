# Sourced by kafka.sh, keycloak.sh, test.sh and run.sh: how to install a missing tool on this system.
#
#   install_hint java17|java21|maven   prints one line: "install it with: <command for this system>"
#
# The system is read from /etc/os-release (ID, then ID_LIKE; INSTALL_HINTS_OS_RELEASE overrides the
# file, for tests) or uname (macOS). An unknown system gets the vendor-neutral downloads.

_hint_system() {
  if [ "$(uname -s 2>/dev/null)" = Darwin ] && [ -z "${INSTALL_HINTS_OS_RELEASE:-}" ]; then echo macos; return; fi
  local file="${INSTALL_HINTS_OS_RELEASE:-/etc/os-release}" id="" like="" word
  if [ -r "$file" ]; then
    id="$(. "$file" 2>/dev/null; echo "${ID:-}")"
    like="$(. "$file" 2>/dev/null; echo "${ID_LIKE:-}")"
  fi
  for word in $id $like; do
    case "$word" in
      ubuntu) echo ubuntu; return ;;
      debian) echo debian; return ;;
      fedora|rhel|centos|rocky|almalinux) echo fedora; return ;;
      opensuse*|suse|sles) echo suse; return ;;
      alpine) echo alpine; return ;;
      arch|manjaro) echo arch; return ;;
    esac
  done
  echo unknown
}

install_hint() {
  local tool="$1" system version
  system="$(_hint_system)"
  version="${tool#java}"
  case "$tool:$system" in
    java17:debian|java*:ubuntu) echo "install it with: sudo apt-get install openjdk-$version-jre-headless" ;;
    java*:debian) echo "install it with: sudo apt-get install openjdk-$version-jre-headless (Debian 13 or newer; on Debian 12 use Eclipse Temurin: https://adoptium.net/installation/linux/)" ;;
    java*:fedora) echo "install it with: sudo dnf install java-$version-openjdk-headless" ;;
    java*:suse) echo "install it with: sudo zypper install java-$version-openjdk-headless" ;;
    java*:alpine) echo "install it with: sudo apk add openjdk$version-jre-headless" ;;
    java*:arch) echo "install it with: sudo pacman -S jre$version-openjdk-headless" ;;
    java*:macos) echo "install it with: brew install openjdk@$version (then follow brew's note to put it on PATH)" ;;
    java*:*) echo "install a Java $version+ runtime (e.g. Eclipse Temurin from https://adoptium.net, or SDKMAN: sdk install java $version-tem) and put java on PATH or set JAVA_HOME" ;;
    maven:debian|maven:ubuntu) echo "install it with: sudo apt-get install maven" ;;
    maven:fedora) echo "install it with: sudo dnf install maven" ;;
    maven:suse) echo "install it with: sudo zypper install maven" ;;
    maven:alpine) echo "install it with: sudo apk add maven" ;;
    maven:arch) echo "install it with: sudo pacman -S maven" ;;
    maven:macos) echo "install it with: brew install maven" ;;
    *) echo "install Apache Maven 3.6+ (https://maven.apache.org/install.html, or SDKMAN: sdk install maven) and put mvn on PATH" ;;
  esac
}
