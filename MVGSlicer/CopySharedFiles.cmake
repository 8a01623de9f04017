# Run at build time (cmake -DSOURCE_ROOT=... -DDESTINATION=... -P CopySharedFiles.cmake) by the
# MVGSlicerSharedFiles target: copies MVGCore and the repository-level resources next to the
# module, on every build, so an edited MVGCore or a new model reaches the build tree without
# re-running CMake. MVGSlicerLib.resources looks for the resources in the module's Resources/.
foreach(var SOURCE_ROOT DESTINATION)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "CopySharedFiles.cmake needs -D${var}=...")
  endif()
endforeach()

foreach(folder Models SampleData)
  file(GLOB shared_files
    ${SOURCE_ROOT}/Resources/${folder}/*.json
    ${SOURCE_ROOT}/Resources/${folder}/*.safetensors
    ${SOURCE_ROOT}/Resources/${folder}/*.nrrd
    )
  file(COPY ${shared_files} DESTINATION ${DESTINATION}/Resources/${folder})
endforeach()

file(COPY ${SOURCE_ROOT}/MVGCore
  DESTINATION ${DESTINATION}
  FILES_MATCHING PATTERN "*.py" PATTERN "*.yaml" PATTERN "__pycache__" EXCLUDE)
