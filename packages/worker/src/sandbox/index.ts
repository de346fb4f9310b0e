/**
 * Isolation and resource limits of builds (issue 8): bubblewrap's command
 * line, the host probe, build cgroups (v1/v2), rlimits, the limit watcher,
 * process trees and the launcher both executors start builds with.
 */
export { bwrapArgs, hiddenPaths, rootEntries, resolvConfBinds, HOST_SYSTEM_DIRS, SANDBOX_UID, SANDBOX_WORKSPACE, type RootEntry, type SandboxMounts } from './bwrap.js';
export { BuildCgroup, setupCgroups, releaseCgroups, describeCgroupHost, parseKeyed, type CgroupHost, type CgroupEvents, type CgroupSources } from './cgroup.js';
export { diskUsage, removeTree } from './disk.js';
export { launchBuild, type LaunchSpec, type LaunchedBuild } from './launch.js';
export { limitsFromEnv, effectiveLimits, describeLimits, rlimitPrelude, limitFromExit, breach, type Limits, type LimitBreach } from './limits.js';
export { probeSandbox, findExecutable, userNamespaceFix, type SandboxProbe, type ProbeOptions } from './probe.js';
export { allProcs, descendants, procInfo, isAlive, withCookie, signalAll, killUntilGone, COOKIE_VAR, type ProcInfo } from './tree.js';
export { resolveBuildUser, runningAsRoot, BuildUserError, type BuildUser } from './users.js';
export { LimitWatcher, type LimitWatcherOptions } from './watch.js';
