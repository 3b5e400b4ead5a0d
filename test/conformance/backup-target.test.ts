// Runs the BackupTarget conformance suite against every built-in backup target.

import { DirectoryBackupTarget } from '../../backends/directory/index.js'
import { backupTargetSuite } from './index.js'

backupTargetSuite({ name: 'directory', factory: (location) => new DirectoryBackupTarget({ path: location }) })
